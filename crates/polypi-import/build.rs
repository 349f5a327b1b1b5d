//! Generates the ONNX protobuf types from the vendored `proto/onnx.proto` with rust-protobuf's
//! pure-Rust code generator (no `protoc` needed).

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .input("proto/onnx.proto")
        .cargo_out_dir("onnx-protos")
        .run_from_script();
}
