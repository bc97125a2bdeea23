//! Generates the Rust code of the three OpenOffload flavours at build time with protox (a pure
//! Rust protobuf compiler), so no system `protoc` is needed.
//!
//! The v1 and v2 messages are byte-identical on the wire and prost gives them the same Rust
//! names, so the v2 package is mapped onto the v1 Rust types (`extern_path`): both service
//! traits take and return the same structs, and one conversion layer serves every flavour.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "openoffload/v1/openoffload.proto",
        "openoffload/v2/openoffload.proto",
        "openoffload/v1alpha5/openoffload.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true).open_files(files)?;
    // The encoded descriptors, for the gRPC reflection service of the device and the VNF.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("openoffload_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".openoffload.v2", "crate::openoffload::v1")
        // Messages decoded from one slice (see src/codec.rs).
        .codec_path("crate::codec::SliceCodec")
        .compile_fds(fds)?;
    Ok(())
}
