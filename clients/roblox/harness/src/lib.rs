//! The Roblox client's test harness: a Luau VM (mlua, Luau built from source) with a shim of the
//! Roblox APIs the client touches (`shim.luau`), running the spec files in `clients/roblox/specs`
//! against a real `hoard serve` on SQLite over loopback ("live") or on the client's Mock.
//!
//! Invariant: the shim's HttpService does real HTTP (reqwest on this crate's tokio runtime, off
//! the Luau thread), so a request in flight never blocks the VM's other threads; every answer is
//! delivered to the Luau scheduler through one channel, in completion order.

mod http;
mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use mlua::{Lua, LuaSerdeExt, Value};

pub use server::HoardServer;

/// The longest one spec may run (wall time) before it fails.
pub const SPEC_SECONDS_MAX: f64 = 90.0;
/// The API key secret the shim's `HttpService:GetSecret("hoard")` answers in live mode.
pub const GAME_SECRET: &str = "roblox-game-secret-0123456789";

/// Where a spec runs: against `hoard serve`, or on the client's Mock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Live,
    Mock,
}

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What a spec's header lines ask of the server: `--# lease_ttl_ms=1500`.
fn lease_ttl_ms_of(spec: &str) -> u64 {
    spec.lines()
        .filter_map(|line| line.strip_prefix("--# lease_ttl_ms="))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(3_000)
}

/// Whole numbers leave Luau as floats (`5.0`); hoard's versions and epochs are integers.
fn integral(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        J::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => J::from(f as i64),
            _ => J::Number(n),
        },
        J::Array(items) => J::Array(items.into_iter().map(integral).collect()),
        J::Object(map) => J::Object(map.into_iter().map(|(k, v)| (k, integral(v))).collect()),
        other => other,
    }
}

fn install_json(lua: &Lua, rust: &mlua::Table) -> mlua::Result<()> {
    let encode = lua.create_function(|lua, value: Value| {
        let options = mlua::DeserializeOptions::new().encode_empty_tables_as_array(true).deny_unsupported_types(false);
        let json: serde_json::Value = lua.from_value_with(value, options)?;
        serde_json::to_string(&integral(json)).map_err(mlua::Error::external)
    })?;
    rust.set("json_encode", encode)?;
    let decode = lua.create_function(|lua, text: String| {
        let json: serde_json::Value = serde_json::from_str(&text).map_err(mlua::Error::external)?;
        let options = mlua::SerializeOptions::new()
            .serialize_none_to_null(false)
            .serialize_unit_to_null(false)
            .set_array_metatable(false);
        lua.to_value_with(&json, options)
    })?;
    rust.set("json_decode", decode)
}

/// Runs one spec file (`specs/<name>.spec.luau`) in `mode`; fails with the spec's errors.
pub fn run_spec(name: &str, mode: Mode) -> anyhow::Result<()> {
    let dir = client_dir();
    let spec_path = dir.join("specs").join(format!("{name}.spec.luau"));
    let spec = std::fs::read_to_string(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?;
    let shim = std::fs::read_to_string(dir.join("harness/shim.luau")).context("reading shim.luau")?;
    let lease_ttl_ms = lease_ttl_ms_of(&spec);
    let server = match mode {
        Mode::Live => Some(HoardServer::start(lease_ttl_ms)?),
        Mode::Mock => None,
    };
    let http = http::Http::new()?;
    let url = server.as_ref().map(|s| s.url.clone()).unwrap_or_default();
    let sources = [("Hoard", "src/Hoard.luau"), ("HoardClient", "src/HoardClient.luau")]
        .into_iter()
        .map(|(module, file)| {
            std::fs::read_to_string(dir.join(file))
                .map(|text| (module, text))
                .with_context(|| format!("reading {file}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let setup = Setup { mode, url, lease_ttl_ms, shim, spec, name: name.to_string(), sources };
    let report = in_lua(&http, setup).map_err(|e| anyhow!("{name} ({mode:?}) failed:\n{e}"))?;
    eprintln!("{name} ({mode:?}): {report}");
    drop(server);
    Ok(())
}

/// How long a spec may wait for its HTTP answers at most in one scheduler step.
pub(crate) const SCHEDULER_STEP_MAX: Duration = Duration::from_millis(20);

/// What one spec run hands the VM.
struct Setup {
    mode: Mode,
    url: String,
    lease_ttl_ms: u64,
    shim: String,
    spec: String,
    name: String,
    sources: Vec<(&'static str, String)>,
}

fn in_lua(http: &std::sync::Arc<http::Http>, setup: Setup) -> mlua::Result<String> {
    let lua = Lua::new();
    let rust = lua.create_table()?;
    install_json(&lua, &rust)?;
    http.install(&lua, &rust)?;
    let started = Instant::now();
    rust.set("now", lua.create_function(move |_, ()| Ok(started.elapsed().as_secs_f64()))?)?;
    rust.set("mode", if setup.mode == Mode::Live { "live" } else { "mock" })?;
    rust.set("url", setup.url)?;
    rust.set("secret", GAME_SECRET)?;
    rust.set("lease_ttl_ms", setup.lease_ttl_ms)?;
    rust.set("spec_seconds_max", SPEC_SECONDS_MAX)?;
    let sources = lua.create_table()?;
    for (module, text) in setup.sources {
        sources.set(module, text)?;
    }
    rust.set("sources", sources)?;
    let load = lua.create_function(|lua, (source, chunk_name, env): (String, String, mlua::Table)| {
        lua.load(source).set_name(format!("@{chunk_name}")).set_environment(env).call::<Value>(())
    })?;
    rust.set("load", load)?;
    let print = lua.create_function(|_, values: mlua::Variadic<Value>| {
        let text: Vec<String> = values.iter().map(|v| v.to_string().unwrap_or_else(|_| "?".into())).collect();
        eprintln!("{}", text.join("\t"));
        Ok(())
    })?;
    lua.globals().set("print", print)?;
    lua.globals().set("__rust", rust)?;
    let run: mlua::Function = lua.load(setup.shim).set_name("@shim.luau").eval()?;
    let spec_fn: mlua::Function = lua.load(setup.spec).set_name(format!("@{}.spec.luau", setup.name)).eval()?;
    run.call(spec_fn)
}
