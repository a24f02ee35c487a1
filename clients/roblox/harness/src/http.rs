//! The shim's real HTTP: `http_start` sends a request on a tokio runtime and returns its id at
//! once; `http_wait` hands the Luau scheduler the next finished answer (or nothing after a
//! timeout). A request the spec marks `drop_answer` is sent and served, and its answer is lost
//! on the way back (the client sees a transport error), as a timeout would.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use anyhow::Context;
use mlua::Lua;

/// A finished request: id, status (0: no answer), lower-cased headers, body.
type Finished = (u64, u16, HashMap<String, String>, String);

pub struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    sender: Sender<Finished>,
    receiver: Mutex<Receiver<Finished>>,
    next_id: Mutex<u64>,
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

/// HttpService answers decompressed bodies, as Roblox's does.
fn gunzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out)?;
    Ok(out)
}

impl Http {
    pub fn new() -> anyhow::Result<std::sync::Arc<Http>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("a tokio runtime for the shim's HTTP")?;
        let (sender, receiver) = channel();
        let client = reqwest::Client::builder().build().context("an HTTP client")?;
        Ok(std::sync::Arc::new(Http {
            runtime,
            client,
            sender,
            receiver: Mutex::new(receiver),
            next_id: Mutex::new(1),
        }))
    }

    fn start(
        &self,
        method: &str,
        url: &str,
        headers: HashMap<String, String>,
        body: Option<String>,
        compress: bool,
        drop_answer: bool,
    ) -> mlua::Result<u64> {
        let id = {
            let mut next = self.next_id.lock().map_err(|_| mlua::Error::runtime("poisoned id lock"))?;
            *next += 1;
            *next
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(mlua::Error::external)?;
        let mut request = self.client.request(method, url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            if compress {
                request = request
                    .header("Content-Encoding", "gzip")
                    .body(gzip(body.as_bytes()).map_err(mlua::Error::external)?);
            } else {
                request = request.body(body);
            }
        }
        let sender = self.sender.clone();
        self.runtime.spawn(async move {
            let finished = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers: HashMap<String, String> = response
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    let gzipped = headers.get("content-encoding").is_some_and(|e: &String| e == "gzip");
                    match response.bytes().await.map(|bytes| if gzipped { gunzip(&bytes) } else { Ok(bytes.to_vec()) })
                    {
                        Ok(Ok(bytes)) if !drop_answer => {
                            (id, status, headers, String::from_utf8_lossy(&bytes).into_owned())
                        }
                        _ => (id, 0, HashMap::new(), String::new()),
                    }
                }
                Err(error) => (id, 0, HashMap::new(), error.to_string()),
            };
            let _ = sender.send(finished);
        });
        Ok(id)
    }

    fn wait(&self, timeout: Duration) -> Option<Finished> {
        self.receiver.lock().ok()?.recv_timeout(timeout).ok()
    }

    pub fn install(self: &std::sync::Arc<Self>, lua: &Lua, rust: &mlua::Table) -> mlua::Result<()> {
        let http = std::sync::Arc::clone(self);
        let start = lua.create_function(
            move |_,
                  (method, url, headers, body, compress, drop_answer): (
                String,
                String,
                HashMap<String, String>,
                Option<String>,
                bool,
                bool,
            )| { http.start(&method, &url, headers, body, compress, drop_answer) },
        )?;
        rust.set("http_start", start)?;
        let http = std::sync::Arc::clone(self);
        let wait = lua.create_function(move |lua, seconds: f64| {
            let timeout = Duration::from_secs_f64(seconds.clamp(0.0, crate::SCHEDULER_STEP_MAX.as_secs_f64()));
            match http.wait(timeout) {
                None => Ok(mlua::MultiValue::new()),
                Some((id, status, headers, body)) => {
                    let table = lua.create_table()?;
                    for (k, v) in headers {
                        table.set(k, v)?;
                    }
                    Ok(mlua::MultiValue::from_iter([
                        mlua::Value::Number(id as f64),
                        mlua::Value::Number(f64::from(status)),
                        mlua::Value::Table(table),
                        mlua::Value::String(lua.create_string(&body)?),
                    ]))
                }
            }
        })?;
        rust.set("http_wait", wait)
    }
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Http")
    }
}
