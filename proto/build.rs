//! Compiles `cyclotron.proto` with tonic-prost-build (protoc from Debian `protobuf-compiler`,
//! installed by `make setup`; `PROTOC=/path/to/protoc` overrides).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=cyclotron.proto");
    tonic_prost_build::configure().compile_protos(&["cyclotron.proto"], &["."])?;
    Ok(())
}
