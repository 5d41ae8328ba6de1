//! Headless Chromium driven over the DevTools protocol (a WebSocket), for
//! tests of the dashboard: load pages, read the DOM, click, screenshot.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with an empty profile (None, loudly, when it is
    /// not installed and skips are allowed).
    pub fn start() -> Option<Browser> {
        if !super::have_tool("chromium") {
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut port = None;
        let mut line = String::new();
        while Instant::now() < deadline && port.is_none() {
            line.clear();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Some(rest) = line.trim().strip_prefix("DevTools listening on ws://127.0.0.1:") {
                port = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
            }
        }
        let port = port.unwrap_or_else(|| panic!("chromium did not start its DevTools endpoint: {line}"));
        // Keep draining stderr so Chromium never blocks on it.
        std::thread::spawn(move || for _ in err.lines() {});
        // The page target Chromium opened.
        let mut ws_url = None;
        for _ in 0..100 {
            let list: Value = reqwest::blocking::get(format!("http://127.0.0.1:{port}/json/list"))
                .ok()
                .and_then(|r| r.json().ok())
                .unwrap_or(Value::Null);
            ws_url = list
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string));
            if ws_url.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (ws, _) = tungstenite::connect(ws_url.expect("a page target")).expect("DevTools WebSocket");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        }
        let mut b = Browser {
            child,
            ws,
            next: 1,
            events: vec![],
            _profile: profile,
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        Some(b)
    }

    /// Sends a command and returns its result; events seen meanwhile are
    /// kept for [`Browser::wait_event`].
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.read();
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
    }

    fn read(&mut self) -> Value {
        loop {
            match self.ws.read().expect("DevTools message") {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(_) => panic!("DevTools closed the connection"),
                _ => {}
            }
        }
    }

    /// Waits for an event named `method` that came after the last call.
    pub fn wait_event(&mut self, method: &str) {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            self.events.drain(..=i);
            return;
        }
        loop {
            let m = self.read();
            if m["method"] == method {
                return;
            }
        }
    }

    /// Loads `url` and waits for its load event.
    pub fn goto(&mut self, url: &str) {
        self.events.clear();
        let r = self.call("Page.navigate", json!({ "url": url }));
        assert!(r.get("errorText").is_none(), "{url}: {r}");
        self.wait_event("Page.loadEventFired");
    }

    /// Evaluates `js` in the page and returns its value.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// The page's visible text.
    pub fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `js` (which must submit a form or follow a link) and waits for
    /// the next page to load.
    pub fn navigate_by(&mut self, js: &str) {
        self.events.clear();
        self.eval(js);
        self.wait_event("Page.loadEventFired");
    }

    /// Clicks the first element matching `selector` whose text contains
    /// `text` and waits for the page it leads to.
    pub fn click(&mut self, selector: &str, text: &str) {
        let js = format!(
            "(() => {{ const e = [...document.querySelectorAll({sel})].find(e => e.textContent.includes({txt})); \
             if (!e) throw new Error('nothing to click: ' + {sel} + ' ' + {txt}); e.click(); return true; }})()",
            sel = serde_json::to_string(selector).unwrap(),
            txt = serde_json::to_string(text).unwrap()
        );
        self.navigate_by(&js);
    }

    /// Makes the viewport `width` × `height` CSS pixels (a narrow or
    /// short window); [`Browser::full_window`] undoes it.
    pub fn window(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
    }

    /// Back to the window Chromium started with.
    pub fn full_window(&mut self) {
        self.call("Emulation.clearDeviceMetricsOverride", json!({}));
    }

    /// Waits for the page to load again by itself (a refresh): the next
    /// load event after the one the last navigation waited for.
    pub fn wait_reload(&mut self) {
        self.wait_event("Page.loadEventFired");
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
