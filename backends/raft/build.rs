//! Generates the gRPC service code (client and server stubs) with
//! tonic-build's manual builder: messages are serde types with a postcard
//! codec, so no `.proto` file and no `protoc` are needed.

fn main() {
    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path("crate::wire::PostcardCodec")
            .build()
    };
    let service = tonic_build::manual::Service::builder()
        .name("Node")
        .package("fencelock.v1")
        .method(method(
            "raft",
            "Raft",
            "crate::wire::RaftRpc",
            "crate::wire::RaftReply",
        ))
        .method(method(
            "client",
            "Client",
            "crate::wire::ClientRpc",
            "crate::wire::ClientReply",
        ))
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
}
