//! The web console in a real browser: headless Chromium (Debian's `chromium`) driven over
//! WebDriver (`chromium-driver`) by a small client speaking the W3C protocol's JSON over reqwest.
//! Every page is used against a real `hoard serve` on SQLite and photographed into
//! `target/tmp/console-screenshots`; a read-only key's repair is refused and changes nothing.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use hoard::store::{Commit, DocId, Write};
use serde_json::{Value, json};

use crate::http_liveops::{OPERATOR_SECRET, sqlite_server};
use crate::support::{ADMIN_SECRET, READ_SECRET};

/// How many times a page's answer is looked for, `BROWSER_POLL_INTERVAL_MS` apart (a real
/// browser runs in real time, so this waits on the wall clock).
const BROWSER_POLL_ATTEMPTS_MAX: u32 = 100;
const BROWSER_POLL_INTERVAL_MS: u64 = 100;
/// How long chromedriver gets to start listening.
const DRIVER_START_ATTEMPTS_MAX: u32 = 100;
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver as a child process, killed when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn find_program(names: &[&str]) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    for name in names {
        for folder in path.split(':') {
            let candidate = std::path::Path::new(folder).join(name);
            if candidate.is_file() {
                return Some(candidate.to_string_lossy().into_owned());
            }
        }
    }
    None
}

async fn start_driver() -> Driver {
    let program = find_program(&["chromedriver"]).unwrap_or_else(|| {
        panic!("chromedriver is not installed: `apt-get install -y chromium chromium-driver` (.ci/run installs both)")
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port();
    let child = tokio::process::Command::new(program)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..DRIVER_START_ATTEMPTS_MAX {
        if http.get(format!("{url}/status")).send().await.is_ok() {
            return Driver { child, url };
        }
        tokio::time::sleep(Duration::from_millis(BROWSER_POLL_INTERVAL_MS)).await;
    }
    panic!("chromedriver did not start listening on {url}");
}

/// One WebDriver session.
struct Browser {
    http: reqwest::Client,
    session: String,
    screenshots: std::path::PathBuf,
}

impl Browser {
    async fn open(driver: &Driver, profile_dir: &std::path::Path) -> Browser {
        let binary =
            find_program(&["chromium", "chromium-browser"]).expect("chromium is installed with chromium-driver");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .chain([format!("--user-data-dir={}", profile_dir.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": {"binary": binary, "args": args}}}});
        let http = reqwest::Client::new();
        let answer: Value = http
            .post(format!("{}/session", driver.url))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session =
            answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}")).to_string();
        let screenshots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/console-screenshots");
        std::fs::create_dir_all(&screenshots).expect("screenshot folder");
        Browser { http, session: format!("{}/session/{session}", driver.url), screenshots }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let answer: Value = request.send().await.expect("webdriver answers").json().await.expect("json");
        if answer["value"].get("error").is_some() {
            panic!("webdriver {method} {path}: {answer}");
        }
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url}))).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await;
        found[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("no element {css}")).to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call("POST", &format!("/element/{element}/clear"), None).await;
        self.call("POST", &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call("POST", &format!("/element/{element}/click"), None).await;
    }

    async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        self.call("GET", &format!("/element/{element}/text"), None).await.as_str().unwrap_or_default().to_string()
    }

    /// Waits until `css`'s text contains `expected`; returns the text.
    async fn wait_for(&self, css: &str, expected: &str) -> String {
        let mut text = String::new();
        for _ in 0..BROWSER_POLL_ATTEMPTS_MAX {
            text = self.text(css).await;
            if text.contains(expected) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(BROWSER_POLL_INTERVAL_MS)).await;
        }
        panic!("{css} never showed {expected:?}; it shows {text:?}");
    }

    async fn screenshot(&self, name: &str) {
        let encoded = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(encoded.as_str().expect("base64")).expect("png");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(self.screenshots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    async fn page(&self, base: &str, name: &str) {
        self.go(&format!("{base}/console#{name}")).await;
    }

    async fn use_key(&self, secret: &str) {
        self.type_into("#api-key", secret).await;
        self.click("#save-key").await;
        self.wait_for("#status", "key set").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_work_in_chromium_and_a_read_only_key_is_refused() {
    let (server, store, _folder) = sqlite_server().await;
    let alice = DocId::parse("players", "alice").expect("id");
    for (level, coins) in [(1, 100), (2, 3)] {
        let value = json!({"data": {"level": level, "coins": coins, "items": {"sword-1": {}}, "purchases": ["p1"]}});
        let write = Write::put(alice.clone(), value).user_ids(vec!["roblox:1".into()]);
        assert!(store.commit(Commit::single(write)).await.expect("commit").is_committed());
    }
    let bob = Write::put(DocId::parse("players", "bob").expect("id"), json!({"data": {"level": 40, "items": {}}}))
        .user_ids(vec!["roblox:2".into()]);
    assert!(store.commit(Commit::single(bob)).await.expect("commit").is_committed());
    let operator = store.operator().expect("operator store");
    for (name, kind, path) in [("items", "keys", "/data/items"), ("level", "number", "/data/level")] {
        let decl = hoard::store::index::IndexDecl {
            store: alice.store.clone(),
            name: name.into(),
            kind: hoard::store::index::IndexKind::parse(kind).expect("kind"),
            path: path.into(),
        };
        operator.declare_index(decl).await.expect("declare");
    }

    let driver = start_driver().await;
    let profile_dir = tempfile::tempdir().expect("a fresh browser profile");
    let browser = Browser::open(&driver, profile_dir.path()).await;
    let base = server.url.clone();

    browser.page(&base, "search").await;
    browser.use_key(OPERATOR_SECRET).await;
    browser.type_into("#user-id", "roblox:1").await;
    browser.click("#form-user button").await;
    browser.wait_for("#search-result", "alice").await;
    browser.type_into("#item-id", "sword-1").await;
    browser.click("#form-item button").await;
    browser.wait_for("#search-result", "\"keys\"").await;
    browser.screenshot("search").await;

    browser.page(&base, "profile").await;
    browser.type_into("#form-profile .key", "alice").await;
    browser.click("#form-profile button").await;
    browser.wait_for("#profile-tree", "coins: 3").await;
    browser.wait_for("#profile-holder", "\"holder\": null").await;
    browser.screenshot("profile").await;

    browser.page(&base, "history").await;
    browser.type_into("#form-diff .key", "alice").await;
    browser.type_into("#diff-from", "1").await;
    browser.click("#form-diff button").await;
    browser.wait_for("#history-result", "/data/coins").await;
    browser.click("#form-field button").await;
    browser.wait_for("#history-result", "\"value\": 100").await;
    browser.screenshot("history").await;

    browser.page(&base, "logs").await;
    browser.type_into("#form-logs .key", "alice").await;
    browser.click("#form-logs button").await;
    browser.wait_for("#logs-result", "\"receipts\"").await;
    browser.screenshot("logs").await;

    browser.page(&base, "repair").await;
    browser.type_into("#form-restore .key", "alice").await;
    browser.type_into("#restore-version", "1").await;
    browser.type_into("#restore-except", "/data/purchases").await;
    browser.click("#restore-preview").await;
    browser.wait_for("#repair-result", "\"preview\": true").await;
    browser.type_into("#grant-id", "console-grant-1").await;
    browser.click("#form-grant button").await;
    browser.wait_for("#repair-result", "\"sent\": true").await;
    browser.screenshot("repair").await;

    browser.page(&base, "leaderboard").await;
    browser.click("#form-top button").await;
    browser.wait_for("#leaderboard-result", "bob").await;
    browser.screenshot("leaderboard").await;

    browser.page(&base, "audit").await;
    browser.click("#audit-refresh").await;
    browser.wait_for("#audit-result", "grant").await;
    browser.screenshot("audit").await;

    // A read-only key: the console shows the API's refusal, and nothing changes.
    let inbox_before = hoard::store::get(&*store, &alice).await.expect("read").inbox.len();
    browser.page(&base, "repair").await;
    browser.use_key(READ_SECRET).await;
    browser.type_into("#form-restore .key", "alice").await;
    browser.type_into("#grant-id", "console-grant-2").await;
    browser.click("#form-grant button").await;
    browser.wait_for("#repair-result", "Refused (403)").await;
    browser.screenshot("refused-read-only").await;
    assert_eq!(hoard::store::get(&*store, &alice).await.expect("read").inbox.len(), inbox_before, "nothing granted");

    browser.page(&base, "erasure").await;
    browser.use_key(ADMIN_SECRET).await;
    browser.type_into("#erase-user", "roblox:2").await;
    browser.click("#form-erase button").await;
    browser.wait_for("#erasure-result", "\"documents_erased\": 1").await;
    browser.screenshot("erasure").await;
    browser.call("DELETE", "", None).await;
}
