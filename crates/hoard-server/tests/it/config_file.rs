//! The `hoard serve --config` file through the code path the command uses (`load_file`, then
//! `resolve`): every field lands, flags and environment win field by field, and an unknown field
//! or a wrong type is refused with the field and its line. (The environment reaches `resolve`
//! through clap, in the same `Overrides` as the flags; `hoard-cli`'s `tests/serve.rs` runs the
//! binary with variables set on the child to check flag over variable over file.)

use std::collections::BTreeSet;

use hoard_server::auth::{Scope, hash_secret, hash_secret_hex};
use hoard_server::config::{self, FileConfig, Overrides};

const EVERY_FIELD: &str = r#"
listen = "127.0.0.1:7999"
db = "postgres://postgres@127.0.0.1/hoard_from_file"
postgres_schema = "from_file"
postgres_profile = "portable"
postgres_pooler = "transaction"
postgres_listen_url = "postgres://postgres@127.0.0.1:5432/hoard_from_file"
body_bytes_max = 1111
store_body_bytes_max = 2222
request_timeout_ms = 33333
concurrent_requests_max = 44
header_read_timeout_ms = 4444
connections_max = 333
lease_ttl_ms = 5555
shutdown_deadline_ms = 6666
api_keys_refresh_interval_ms = 777

[[keys]]
name = "ops"
scope = "admin"
sha256 = "HASH_OF_OPS"

[[keys]]
name = "eu-1"
scope = "game_server"
stores = ["players", "guilds"]
secret = "eu-1-secret"
rate_per_second = 12
rate_burst = 34
"#;

fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let folder = tempfile::tempdir().expect("folder");
    let path = folder.path().join("hoard.toml");
    std::fs::write(&path, text).expect("write");
    (folder, path)
}

fn every_field_file() -> FileConfig {
    let text = EVERY_FIELD.replace("HASH_OF_OPS", &hash_secret_hex("ops-secret"));
    let (_folder, path) = write(&text);
    config::load_file(&path).expect("the file loads")
}

#[test]
fn every_file_field_lands_in_the_settings() {
    let settings = config::resolve(Overrides::default(), every_field_file()).expect("resolves");
    assert_eq!(settings.listen.to_string(), "127.0.0.1:7999");
    assert_eq!(settings.db.as_deref(), Some("postgres://postgres@127.0.0.1/hoard_from_file"));
    assert_eq!(settings.postgres_schema.as_deref(), Some("from_file"));
    assert_eq!(settings.postgres_profile, hoard::store::PostgresProfile::Portable);
    assert_eq!(settings.postgres_pooler, hoard::store::Pooler::Transaction);
    assert_eq!(settings.postgres_listen_url.as_deref(), Some("postgres://postgres@127.0.0.1:5432/hoard_from_file"));
    let service = &settings.service;
    assert_eq!(service.limits.body_bytes_max, 1111);
    assert_eq!(service.limits.store_body_bytes_max, 2222);
    assert_eq!(service.limits.request_timeout_ms, 33333);
    assert_eq!(service.limits.concurrent_requests_max, 44);
    assert_eq!(service.limits.header_read_timeout_ms, 4444);
    assert_eq!(service.limits.connections_max, 333);
    assert_eq!(service.lease_ttl_ms, 5555);
    assert_eq!(settings.shutdown_deadline_ms, 6666);
    assert_eq!(service.api_keys_refresh_interval_ms, 777);
    let [ops, eu] = service.keys.as_slice() else { panic!("two keys: {:?}", service.keys) };
    assert_eq!((ops.name.as_str(), ops.scope, ops.stores.clone()), ("ops", Scope::Admin, None));
    assert_eq!(ops.hash, hash_secret("ops-secret"), "sha256 given as hex");
    assert_eq!((ops.rate_per_second, ops.rate_burst), (config::RATE_PER_SECOND_DEFAULT, config::RATE_BURST_DEFAULT));
    assert_eq!((eu.name.as_str(), eu.scope), ("eu-1", Scope::GameServer));
    let stores: BTreeSet<String> = ["players", "guilds"].into_iter().map(String::from).collect();
    assert_eq!(eu.stores, Some(stores));
    assert_eq!(eu.hash, hash_secret("eu-1-secret"), "a plain secret is hashed as it is read");
    assert_eq!((eu.rate_per_second, eu.rate_burst), (12, 34));
}

#[test]
fn an_empty_file_gives_the_named_defaults() {
    let (_folder, path) = write("");
    let settings = config::resolve(Overrides::default(), config::load_file(&path).expect("loads")).expect("resolves");
    assert_eq!(settings.listen.to_string(), config::DEFAULT_LISTEN);
    assert_eq!(settings.db, None);
    assert_eq!(settings.postgres_profile, hoard::store::PostgresProfile::Full);
    assert_eq!(settings.postgres_pooler, hoard::store::Pooler::None);
    assert_eq!(settings.postgres_listen_url, None);
    assert_eq!(settings.service.limits, config::HttpLimits::default());
    assert_eq!(settings.service.lease_ttl_ms, config::LEASE_TTL_MS_DEFAULT);
    assert_eq!(settings.shutdown_deadline_ms, config::SHUTDOWN_DEADLINE_MS_DEFAULT);
    assert_eq!(settings.service.api_keys_refresh_interval_ms, config::API_KEYS_REFRESH_INTERVAL_MS_DEFAULT);
    assert!(settings.service.keys.is_empty());
}

#[test]
fn flags_and_environment_win_over_the_file_field_by_field() {
    let overrides = Overrides {
        listen: Some("0.0.0.0:8000".parse().expect("address")),
        db: Some("flag.sqlite3".into()),
        postgres_schema: Some("from_flag".into()),
        postgres_profile: Some("full".into()),
        postgres_pooler: Some("none".into()),
        postgres_listen_url: Some("postgres://flag".into()),
        api_keys: Some("cli-key:read_only:*:secret:from-flag".into()),
        body_bytes_max: Some(1),
        store_body_bytes_max: Some(2),
        request_timeout_ms: Some(30_001),
        concurrent_requests_max: Some(4),
        header_read_timeout_ms: Some(222),
        connections_max: Some(3),
        lease_ttl_ms: Some(5),
        shutdown_deadline_ms: Some(6),
        api_keys_refresh_interval_ms: Some(70),
    };
    let settings = config::resolve(overrides, every_field_file()).expect("resolves");
    assert_eq!(settings.listen.to_string(), "0.0.0.0:8000");
    assert_eq!(settings.db.as_deref(), Some("flag.sqlite3"));
    assert_eq!(settings.postgres_schema.as_deref(), Some("from_flag"));
    assert_eq!(settings.postgres_profile, hoard::store::PostgresProfile::Full);
    assert_eq!(settings.postgres_pooler, hoard::store::Pooler::None);
    assert_eq!(settings.postgres_listen_url.as_deref(), Some("postgres://flag"));
    let limits = &settings.service.limits;
    assert_eq!(
        (limits.body_bytes_max, limits.store_body_bytes_max, limits.request_timeout_ms, limits.concurrent_requests_max),
        (1, 2, 30_001, 4)
    );
    assert_eq!((limits.header_read_timeout_ms, limits.connections_max), (222, 3));
    assert_eq!(settings.service.lease_ttl_ms, 5);
    assert_eq!(settings.shutdown_deadline_ms, 6);
    assert_eq!(settings.service.api_keys_refresh_interval_ms, 70);
    let names: Vec<&str> = settings.service.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["ops", "eu-1", "cli-key"], "--api-keys adds to the file's keys");
    // One override leaves every other field to the file.
    let only_listen = Overrides { listen: Some("127.0.0.1:1".parse().expect("address")), ..Overrides::default() };
    let settings = config::resolve(only_listen, every_field_file()).expect("resolves");
    assert_eq!((settings.listen.port(), settings.service.lease_ttl_ms), (1, 5555));
}

#[test]
fn unknown_fields_and_wrong_types_are_refused_naming_the_field_and_line() {
    let cases = [
        ("lease_ttl_ms = 1000\nlisen = \"127.0.0.1:1\"\n", "lisen", "line 2"),
        ("\n\nlease_ttl_ms = \"soon\"\n", "lease_ttl_ms", "line 3"),
        ("listen = \"not an address\"\n", "listen", "line 1"),
        ("body_bytes_max = -5\n", "body_bytes_max", "line 1"),
        ("[[keys]]\nname = \"a\"\nscop = \"admin\"\nsecret = \"s\"\n", "scop", "line 3"),
        ("[[keys]]\nname = \"a\"\nscope = \"superuser\"\nsecret = \"s\"\n", "superuser", "line 3"),
    ];
    for (text, field, line) in cases {
        let (_folder, path) = write(text);
        let error = config::load_file(&path).expect_err("refused");
        assert!(error.contains(field) && error.contains(line), "{text:?} must name {field} and {line}: {error}");
        assert!(error.contains("hoard.toml"), "names the file: {error}");
    }
}

#[test]
fn settings_out_of_bounds_and_clashing_keys_are_refused_with_a_message() {
    let cases = [
        ("request_timeout_ms = 1000\n", "request_timeout_ms"),
        ("api_keys_refresh_interval_ms = 1\n", "api_keys_refresh_interval_ms"),
        ("header_read_timeout_ms = 5\n", "header_read_timeout_ms"),
        ("connections_max = 0\n", "connections_max"),
        ("postgres_profile = \"cockroach\"\n", "full or portable"),
        ("postgres_pooler = \"session\"\n", "none or transaction"),
        (
            "[[keys]]\nname = \"a\"\nscope = \"admin\"\nsecret = \"s\"\n[[keys]]\nname = \"a\"\nscope = \"admin\"\nsecret = \"t\"\n",
            "two API keys are named a",
        ),
        ("[[keys]]\nname = \"a\"\nscope = \"admin\"\n", "exactly one of"),
        ("[[keys]]\nname = \"a b\"\nscope = \"admin\"\nsecret = \"s\"\n", "key name"),
    ];
    for (text, expected) in cases {
        let file = config::parse_file(text).expect("parses");
        let error = config::resolve(Overrides::default(), file).expect_err("refused");
        assert!(error.contains(expected), "{text:?}: {error}");
    }
}
