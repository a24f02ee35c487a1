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

/// The raw store protocol's schemas mirror the library's store types by hand; this holds the
/// mirrors to what serde actually writes, field for field.
#[test]
fn raw_store_schemas_name_exactly_the_fields_the_library_serializes() {
    use hoard::store::{Commit, DocId, Document, HolderId, HolderLease, KeyPage, Notification, VersionInfo, Write};
    let document = hoard_server::openapi::document();
    let schemas = &document["components"]["schemas"];
    let id = DocId::parse("players", "alice").expect("id");
    let write = Write::new(id.clone());
    let info = VersionInfo {
        version: 1,
        written_at_ms: 0,
        deleted: false,
        value_bytes: 0,
        commit_id: Commit::single(write.clone()).id,
    };
    let samples = [
        ("DocId", serde_json::to_value(&id)),
        ("Write", serde_json::to_value(&write)),
        ("Commit", serde_json::to_value(Commit::single(write.clone()))),
        ("Document", serde_json::to_value(Document::absent(id.clone()))),
        ("LeaseState", serde_json::to_value(Document::absent(id).lease)),
        ("VersionInfo", serde_json::to_value(&info)),
        ("HolderLease", serde_json::to_value(HolderLease { holder: HolderId::new("h").expect("h"), expires_at_ms: 0 })),
        ("Notification", serde_json::to_value(Notification { topic: "t".into(), payload: "p".into() })),
        ("KeyPage", serde_json::to_value(KeyPage::default())),
    ];
    for (name, sample) in samples {
        let sample = sample.expect("serializes");
        let mut written: Vec<&String> = sample.as_object().expect("an object").keys().collect();
        let mut described: Vec<&String> =
            schemas[name]["properties"].as_object().unwrap_or_else(|| panic!("schema {name}")).keys().collect();
        written.sort();
        described.sort();
        assert_eq!(written, described, "schema {name} drifted from the library type");
    }
}
