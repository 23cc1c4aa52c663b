//! Rebuild when the web UI changes: `include_dir!` embeds `web/`, and
//! cargo does not otherwise know the crate depends on those files.
fn main() {
    println!("cargo:rerun-if-changed=../web");
}
