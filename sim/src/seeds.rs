//! Seeds, the replay command, and the many-seeds summary.
//!
//! One `u64` seed decides a whole run: the fault mix, the workload, every
//! message delay and loss (madsim's seeded rng). A failing seed is printed
//! with the exact command that replays it.

use std::fmt;
use std::ops::Range;

/// Why a `--seeds` argument was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("invalid `--seeds` value {0:?}: expected `A..B` (B excluded), `A..=B` or one number")]
    Syntax(String),
    #[error("invalid `--seeds` range {0}..{1}: it is empty")]
    Empty(u64, u64),
}

/// Parses `A..B`, `A..=B` or `N`.
pub fn parse_range(text: &str) -> Result<Range<u64>, SeedError> {
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| SeedError::Syntax(text.to_string()))
    };
    let range = if let Some((a, b)) = text.split_once("..=") {
        let (a, b) = (num(a)?, num(b)?);
        a..b.checked_add(1)
            .ok_or(SeedError::Syntax(text.to_string()))?
    } else if let Some((a, b)) = text.split_once("..") {
        num(a)?..num(b)?
    } else {
        let n = num(text)?;
        n..n + 1
    };
    if range.is_empty() {
        return Err(SeedError::Empty(range.start, range.end));
    }
    Ok(range)
}

/// The command that replays one seed (with the planted bug, if any).
pub fn replay_command(seed: u64, planted: Option<&str>) -> String {
    let plant = planted.map_or(String::new(), |p| format!(" --plant {p}"));
    format!("cargo run -p fencelock-sim --release -- --seed {seed}{plant} --verbose")
}

/// Totals over many seeds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub seeds: u64,
    pub failures: Vec<(u64, String)>,
    pub sim_ms: u64,
    pub wall_ms: u64,
    pub faults: u64,
    pub ops: u64,
    pub ops_checked: u64,
    pub inconclusive_keys: u64,
    pub threads: usize,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wall_s = (self.wall_ms as f64 / 1000.0).max(0.001);
        let sim_s = self.sim_ms as f64 / 1000.0;
        writeln!(f, "seeds run:            {}", self.seeds)?;
        writeln!(f, "failures:             {}", self.failures.len())?;
        writeln!(f, "simulated time:       {sim_s:.1} s")?;
        writeln!(
            f,
            "wall time:            {wall_s:.1} s on {} threads",
            self.threads
        )?;
        writeln!(f, "faults injected:      {}", self.faults)?;
        writeln!(f, "operations recorded:  {}", self.ops)?;
        writeln!(
            f,
            "operations checked:   {} (linearizability)",
            self.ops_checked
        )?;
        writeln!(f, "inconclusive keys:    {}", self.inconclusive_keys)?;
        writeln!(f, "sim-seconds per wall-second: {:.1}", sim_s / wall_s)?;
        write!(
            f,
            "seeds per minute:     {:.1}",
            self.seeds as f64 * 60.0 / wall_s
        )?;
        for (seed, why) in &self.failures {
            write!(f, "\nFAILED seed {seed}: {why}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_name_the_flag() {
        assert_eq!(parse_range("1..1000"), Ok(1..1000));
        assert_eq!(parse_range("1..=3"), Ok(1..4));
        assert_eq!(parse_range("7"), Ok(7..8));
        assert_eq!(parse_range("5..5"), Err(SeedError::Empty(5, 5)));
        let e = parse_range("x..3").unwrap_err().to_string();
        assert!(e.contains("--seeds"), "{e}");
        assert!(parse_range(&format!("1..={}", u64::MAX)).is_err());
    }

    #[test]
    fn the_replay_command_names_seed_and_planted_bug() {
        let c = replay_command(42, Some("steal-keeps-token"));
        assert!(c.contains("--seed 42") && c.contains("--plant steal-keeps-token"));
    }
}
