//! Headless Chromium driven through chromedriver (W3C WebDriver over HTTP), blocking.
//!
//! One window of a chosen size, JavaScript on or off; the page is read with the WebDriver
//! commands a person's view comes down to: go to a URL, click, read an element's text,
//! run a script (WebDriver's, which runs even where the page's own JavaScript is off), take a
//! screenshot.

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

const INSTALL: &str = "install them with `apt-get install chromium chromium-driver` \
                       (`cargo xtask deps` does), or set LAB_CHROMIUM and LAB_CHROMEDRIVER";

/// What went wrong, in words; WebDriver's own message is kept.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn find(var: &str, names: &[&str]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    names
        .iter()
        .flat_map(|n| ["/usr/bin", "/usr/local/bin"].map(|d| Path::new(d).join(n)))
        .find(|p| p.is_file())
        .ok_or_else(|| Error(format!("{} not found: {INSTALL}", names[0])))
}

/// How the window is opened.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub width: u32,
    pub height: u32,
    pub javascript: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            width: 1280,
            height: 1000,
            javascript: true,
        }
    }
}

/// A chromedriver and one Chromium session; both end when it is dropped.
pub struct Browser {
    driver: Child,
    agent: ureq::Agent,
    session: String,
    _profile: tempfile::TempDir,
}

/// An element found on the page.
#[derive(Clone, Debug)]
pub struct Element(String);

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    pub fn start(o: Options) -> Result<Browser> {
        let chromium = find(
            "LAB_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        )?;
        let chromedriver = find("LAB_CHROMEDRIVER", &["chromedriver"])?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error(format!("no free port for chromedriver: {e}")))?
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error(format!(
                    "cannot start {}: {e}; {INSTALL}",
                    chromedriver.display()
                ))
            })?;
        let profile =
            tempfile::tempdir().map_err(|e| Error(format!("no profile directory: {e}")))?;
        let mut prefs = json!({});
        if !o.javascript {
            prefs["profile.managed_default_content_settings.javascript"] = json!(2);
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "prefs": prefs,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={},{}", o.width, o.height),
                ]
            }
        }}});
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut driver = driver;
        let session = loop {
            match call(&agent, "POST", &format!("{base}/session"), Some(&caps)) {
                Ok(v) => match v["sessionId"].as_str() {
                    Some(s) => break s.to_string(),
                    None => return Err(Error(format!("chromedriver started no session: {v}"))),
                },
                Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = driver.try_wait() {
                        return Err(Error(format!(
                            "chromedriver ended at once ({status}); {INSTALL}"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    let _ = driver.kill();
                    return Err(Error(format!(
                        "chromedriver at {base} started no Chromium session: {e}"
                    )));
                }
            }
        };
        Ok(Browser {
            driver,
            agent,
            session: format!("{base}/session/{session}"),
            _profile: profile,
        })
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        call(
            &self.agent,
            method,
            &format!("{}{path}", self.session),
            body,
        )
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(&json!({"url": url})))?;
        Ok(())
    }

    pub fn url(&self) -> Result<String> {
        Ok(self
            .cmd("GET", "/url", None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The elements a CSS selector finds, maybe none.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self.cmd(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": css})),
        )?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str().map(|s| Element(s.to_string())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The one element a CSS selector finds first.
    pub fn find(&self, css: &str) -> Result<Element> {
        self.find_all(css)?
            .into_iter()
            .next()
            .ok_or_else(|| Error(format!("no element matches {css}")))
    }

    /// Waits up to `timeout` for an element.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(css) {
                Ok(e) => return Ok(e),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn click(&self, e: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(&json!({})))?;
        Ok(())
    }

    /// Clicks `e`, a link or a form's button, and waits up to `timeout` for the page that answers to
    /// hold `css`. The page clicked on is marked first, so an element that page already held is
    /// never taken for the answer.
    pub fn submit(&self, e: &Element, css: &str, timeout: Duration) -> Result<Element> {
        self.script("document.documentElement.setAttribute('data-submitted', ''); return true;")?;
        self.click(e)?;
        let deadline = Instant::now() + timeout;
        loop {
            let answered = self
                .script("return !document.documentElement.hasAttribute('data-submitted');")
                .map(|v| v.as_bool() == Some(true))
                .unwrap_or(false);
            if answered {
                let left = deadline.saturating_duration_since(Instant::now());
                return self.wait_for(css, left);
            }
            if Instant::now() >= deadline {
                return Err(Error(format!(
                    "no new page came back within {} s of the click",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The text a person sees in it.
    pub fn text(&self, e: &Element) -> Result<String> {
        Ok(self
            .cmd("GET", &format!("/element/{}/text", e.0), None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Runs `script` in the page and gives what it returns. WebDriver runs it even in a window
    /// whose pages may not run their own JavaScript.
    pub fn script(&self, script: &str) -> Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    /// The window's viewport as PNG.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        let v = self.cmd("GET", "/screenshot", None)?;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|e| Error(format!("the screenshot does not decode: {e}")))
    }

    /// Writes a screenshot to `path`, making its directory.
    pub fn save_screenshot(&self, path: &Path) -> Result<()> {
        let png = self.screenshot()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error(format!("cannot make {}: {e}", dir.display())))?;
        }
        std::fs::write(path, png)
            .map_err(|e| Error(format!("cannot write {}: {e}", path.display())))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.cmd("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver command: its `value`, or WebDriver's error in words.
fn call(agent: &ureq::Agent, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
    let sent = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, Some(b)) => agent.post(url).send_json(b),
        (_, None) => agent.post(url).send_empty(),
    };
    let mut res = sent.map_err(|e| Error(format!("{method} {url}: {e}")))?;
    let status = res.status().as_u16();
    let v: Value = res
        .body_mut()
        .read_json()
        .map_err(|e| Error(format!("{method} {url}: an answer that is not JSON: {e}")))?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if status >= 400 {
        return Err(Error(format!(
            "{method} {url}: {} ({})",
            value["message"].as_str().unwrap_or("no message"),
            value["error"].as_str().unwrap_or("error")
        )));
    }
    Ok(value)
}
