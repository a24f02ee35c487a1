//! The profile schema's rules, pure (no store, no engine): template, reconcile, migrations and
//! the compatibility marker, validation, private fields, change lists.

use hoard::engine::schema::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::json;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Settings {
    music: bool,
    volume: u8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    coins: i64,
    items: Vec<String>,
    settings: Settings,
    title: Option<String>,
    purchase_history: Vec<String>,
}

fn template() -> Profile {
    Profile {
        coins: 100,
        items: vec!["starter sword".to_owned()],
        settings: Settings { music: true, volume: 5 },
        title: Some("newcomer".to_owned()),
        purchase_history: Vec::new(),
    }
}

fn schema() -> ProfileSchema<Profile> {
    ProfileSchema::new(template).private_field("purchase_history")
}

fn stored(data_version: u32, last_compatible_version: u32, data: Value) -> Value {
    json!({
        "hoard_profile": {
            "data_version": data_version,
            "last_compatible_version": last_compatible_version,
        },
        "data": data,
    })
}

fn full_data() -> Value {
    json!({
        "coins": 7,
        "items": ["axe"],
        "settings": {"music": false, "volume": 9},
        "title": "hero",
        "purchase_history": ["p1"],
    })
}

/// Three migrations: rename gold→coins (breaking), then two that only add fields.
fn schema_with_three_migrations() -> ProfileSchema<Profile> {
    schema()
        .migration(Migration::new("rename gold to coins", |mut value: Value| {
            let fields = value.as_object_mut().ok_or("not an object")?;
            let gold = fields.remove("gold").ok_or("no gold")?;
            fields.insert("coins".to_owned(), gold);
            Ok(value)
        }))
        .migration(
            Migration::new("double coins", |mut value: Value| {
                let coins = value["coins"].as_i64().ok_or("coins is not a number")?;
                value["coins"] = json!(coins * 2);
                Ok(value)
            })
            .backwards_compatible(true),
        )
        .migration(
            Migration::new("add a title", |mut value: Value| {
                value["title"] = json!("veteran");
                Ok(value)
            })
            .backwards_compatible(true),
        )
}

#[test]
fn new_key_gets_the_template() {
    let schema = schema_with_three_migrations();
    let decoded = schema.decode(None).expect("decode");
    assert_eq!(decoded.profile, template());
    assert!(decoded.is_new);
    assert_eq!(decoded.meta, ProfileMeta { data_version: 3, last_compatible_version: 1 });
    assert_eq!(decoded.migrated_from, None);
    assert!(!decoded.reconciled);
}

#[test]
fn stored_profile_round_trips_through_encode_and_decode() {
    let schema = schema();
    let mut profile = template();
    profile.coins = 42;
    let value = schema.encode(&profile, &schema.current_meta()).expect("encode");
    assert_eq!(value["hoard_profile"], json!({"data_version": 0, "last_compatible_version": 0}));
    let decoded = schema.decode(Some(&value)).expect("decode");
    assert_eq!(decoded.profile, profile);
    assert!(!decoded.is_new);
    assert!(!decoded.reconciled);
}

#[test]
fn missing_fields_are_filled_from_the_template_recursively() {
    let value = stored(0, 0, json!({"coins": 3, "settings": {"music": false}}));
    let decoded = schema().decode(Some(&value)).expect("decode");
    assert!(decoded.reconciled);
    assert_eq!(decoded.profile.coins, 3);
    assert_eq!(decoded.profile.items, vec!["starter sword".to_owned()]);
    assert_eq!(decoded.profile.settings, Settings { music: false, volume: 5 });
    assert_eq!(decoded.profile.title, Some("newcomer".to_owned()));
}

#[test]
fn null_and_existing_arrays_are_kept_by_reconcile() {
    let value = stored(0, 0, json!({"items": [], "title": null}));
    let decoded = schema().decode(Some(&value)).expect("decode");
    assert!(decoded.reconciled);
    assert_eq!(decoded.profile.items, Vec::<String>::new());
    assert_eq!(decoded.profile.title, None);
}

#[test]
fn migrations_run_in_order_from_the_stored_version() {
    let schema = schema_with_three_migrations();
    // At version 0 the field was called gold: all three run, in order.
    let from_zero = stored(0, 0, json!({"gold": 5}));
    let decoded = schema.decode(Some(&from_zero)).expect("decode");
    assert_eq!(decoded.profile.coins, 10);
    assert_eq!(decoded.profile.title, Some("veteran".to_owned()));
    assert_eq!(decoded.migrated_from, Some(0));
    assert_eq!(decoded.meta, ProfileMeta { data_version: 3, last_compatible_version: 1 });

    // At version 2 only the last one runs.
    let from_two = stored(2, 1, json!({"coins": 5}));
    let decoded = schema.decode(Some(&from_two)).expect("decode");
    assert_eq!(decoded.profile.coins, 5);
    assert_eq!(decoded.profile.title, Some("veteran".to_owned()));
    assert_eq!(decoded.migrated_from, Some(2));
}

#[test]
fn last_compatible_version_walks_back_over_backwards_compatible_migrations() {
    assert_eq!(schema().last_compatible_version(), 0);
    assert_eq!(schema_with_three_migrations().last_compatible_version(), 1);
    let breaking_last =
        schema_with_three_migrations().migration(Migration::new("breaking", Ok).backwards_compatible(false));
    assert_eq!(breaking_last.data_version(), 4);
    assert_eq!(breaking_last.last_compatible_version(), 4);
    let all_compatible = schema().migration(Migration::new("compatible", Ok).backwards_compatible(true));
    assert_eq!(all_compatible.last_compatible_version(), 0);
}

#[test]
fn failing_migration_is_reported_by_name() {
    let schema = schema_with_three_migrations();
    let value = stored(0, 0, json!({"coins": 5}));
    let error = schema.decode(Some(&value)).expect_err("no gold field");
    assert_eq!(
        error,
        DecodeError::MigrationFailed {
            name: "rename gold to coins".to_owned(),
            from_version: 0,
            reason: "no gold".to_owned(),
        }
    );
}

#[test]
fn migration_that_returns_a_non_object_fails() {
    let schema = schema().migration(Migration::new("breaks everything", |_| Ok(json!(1))));
    let error = schema.decode(Some(&stored(0, 0, full_data()))).expect_err("non-object");
    assert!(matches!(error, DecodeError::MigrationFailed { from_version: 0, .. }), "{error}");
}

#[test]
fn newer_data_opens_when_this_game_is_at_least_the_last_compatible_version() {
    // This game is at version 1; the data was written at version 3, readable from 1.
    let schema = schema().migration(Migration::new("first", Ok));
    let value = stored(3, 1, full_data());
    let decoded = schema.decode(Some(&value)).expect("decode");
    assert_eq!(decoded.profile.coins, 7);
    assert_eq!(decoded.migrated_from, None);
    assert_eq!(decoded.meta, ProfileMeta { data_version: 3, last_compatible_version: 1 });
}

#[test]
fn newer_incompatible_data_is_refused() {
    let schema = schema().migration(Migration::new("first", Ok));
    let value = stored(3, 2, full_data());
    let error = schema.decode(Some(&value)).expect_err("too new");
    assert_eq!(
        error,
        DecodeError::NewerThanThisGame { stored_version: 3, last_compatible_version: 2, this_game_version: 1 }
    );
}

#[test]
fn saving_newer_data_keeps_its_version_marker() {
    let schema = schema().migration(Migration::new("first", Ok));
    let decoded = schema.decode(Some(&stored(3, 1, full_data()))).expect("decode");
    let saved = schema.encode(&decoded.profile, &decoded.meta).expect("encode");
    assert_eq!(saved["hoard_profile"], json!({"data_version": 3, "last_compatible_version": 1}));
}

#[test]
fn encode_refuses_a_marker_older_than_this_game() {
    let schema = schema_with_three_migrations();
    let stale = ProfileMeta { data_version: 1, last_compatible_version: 1 };
    let error = schema.encode(&template(), &stale).expect_err("stale marker");
    assert_eq!(error, EncodeError::MetaOlderThanThisGame { meta_version: 1, this_game_version: 3 });
}

#[test]
fn validation_failure_refuses_encode() {
    let schema = schema().validate(
        |profile: &Profile| {
            if profile.coins < 0 { Err(format!("coins is {}", profile.coins)) } else { Ok(()) }
        },
    );
    let mut profile = template();
    assert!(schema.encode(&profile, &schema.current_meta()).is_ok());
    profile.coins = -1;
    let error = schema.encode(&profile, &schema.current_meta()).expect_err("invalid");
    assert_eq!(error, EncodeError::Invalid { reason: "coins is -1".to_owned() });
}

#[test]
fn profile_that_is_not_an_object_is_refused_by_encode() {
    let schema = ProfileSchema::new(|| 5_i64);
    let error = schema.encode(&5, &schema.current_meta()).expect_err("number");
    assert_eq!(error, EncodeError::NotAnObject { found: "number" });
}

#[test]
fn value_that_is_not_a_profile_is_reported_not_replaced() {
    let schema = schema();
    let foreign_values = [
        json!("just a string"),
        json!({"coins": 5}),
        json!({"data": {"coins": 5}}),
        json!({"hoard_profile": {"data_version": 0, "last_compatible_version": 0}}),
        json!({"hoard_profile": "v1", "data": {}}),
        json!({"hoard_profile": {"data_version": -1, "last_compatible_version": 0}, "data": {}}),
        json!({"hoard_profile": {"data_version": 0}, "data": {}}),
        stored(0, 1, json!({})),
        stored(0, 0, json!([1, 2])),
        stored(0, 0, json!({"coins": "lots"})),
    ];
    for foreign in foreign_values {
        let result = schema.decode(Some(&foreign));
        assert!(matches!(result, Err(DecodeError::NotAProfile { .. })), "{foreign} gave {result:?}");
    }
}

#[test]
fn private_fields_are_left_out_of_the_client_view() {
    let schema = schema();
    let view = schema.client_view(&full_data());
    assert!(view.get("purchase_history").is_none());
    assert_eq!(view["coins"], json!(7));
    assert_eq!(view["settings"], json!({"music": false, "volume": 9}));
}

#[test]
fn changed_fields_name_each_top_level_change() {
    let before = json!({"coins": 1, "items": ["a"], "title": "x", "settings": {"volume": 1}});
    let after = json!({"coins": 2, "items": ["a"], "settings": {"volume": 2}, "badge": true});
    assert_eq!(
        changed_fields(&before, &after),
        vec![
            FieldChange { field: "badge".to_owned(), value: Some(json!(true)) },
            FieldChange { field: "coins".to_owned(), value: Some(json!(2)) },
            FieldChange { field: "settings".to_owned(), value: Some(json!({"volume": 2})) },
            FieldChange { field: "title".to_owned(), value: None },
        ]
    );
    assert!(changed_fields(&before, &before).is_empty());
}

#[test]
fn client_changes_leave_out_private_fields() {
    let before = full_data();
    let mut after = full_data();
    after["coins"] = json!(8);
    after["purchase_history"] = json!(["p1", "p2"]);
    assert_eq!(
        schema().client_changes(&before, &after),
        vec![FieldChange { field: "coins".to_owned(), value: Some(json!(8)) }]
    );
}

#[test]
fn schema_clones_share_their_parts() {
    let schema = schema_with_three_migrations();
    let copy = schema.clone();
    assert!(std::ptr::eq(schema.migrations().as_ptr(), copy.migrations().as_ptr()), "one list, shared");
    assert_eq!(copy.data_version(), 3);
}
