//! The committed `docs/openapi.json` is the document the code generates (rust-analyzer's model:
//! generated files are committed and `cargo test` refreshes them).

#[test]
fn committed_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = hoard_server::openapi::document_text();
    assert!(generated.len() > 1_000, "the document was generated");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        panic!("docs/openapi.json was out of date; it has been regenerated: review and commit it");
    }
}
