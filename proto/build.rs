//! Compiles `argus/v1/*.proto` with protox (no system protoc) and writes the file descriptor set
//! that the servers hand to gRPC reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["argus/v1/agent.proto", "argus/v1/admin.proto"];
    for f in &files {
        println!(
            "cargo:rerun-if-changed=argus/{}",
            f.trim_start_matches("argus/")
        );
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("argus_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Undecodable messages are INVALID_ARGUMENT, not INTERNAL (see src/codec.rs).
        .codec_path("crate::codec::Codec")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
