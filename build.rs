//! Generates the Rust types of `proto/traceloom/log/v1/log.proto` with prost-build, compiling the
//! schema with the pure-Rust `protox` so that no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["traceloom/log/v1/log.proto"], ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .extern_path(
            ".opentelemetry.proto.trace.v1.ResourceSpans",
            "crate::otlp::ResourceSpans",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
