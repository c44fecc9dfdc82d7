//! Records the exact tract version from Cargo.lock: it is part of every receipt's
//! determinism class, and a minor tract update may change float results.
fn main() {
    let lock = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let mut version = "unknown".to_owned();
    let mut in_tract = false;
    for line in text.lines() {
        if line == "name = \"tract-onnx\"" {
            in_tract = true;
        } else if in_tract && line.starts_with("version = ") {
            version = line
                .trim_start_matches("version = ")
                .trim_matches('"')
                .to_owned();
            break;
        } else if line.is_empty() {
            in_tract = false;
        }
    }
    println!("cargo:rustc-env=FAB_TRACT_VERSION={version}");
}
