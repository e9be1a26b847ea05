//! Debian's Chromium, headless, driven over the DevTools protocol the way a user's clicks
//! would drive it: pages load and run their own scripts; the test reads the DOM they drew,
//! sets inputs and clicks buttons (real DOM events), and takes screenshots.
//!
//! The protocol runs over a pipe (`--remote-debugging-pipe`: JSON messages separated by NUL
//! on the browser's descriptors 3 and 4), so no port is opened and no WebSocket is needed.
//! Background networking, sync, extensions and the first-run page are off: the browser talks
//! to nothing but the pages it is given.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::fd::AsRawFd as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// How long one protocol call may take.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

pub struct Browser {
    process: Child,
    to_browser: std::io::PipeWriter,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    _profile: PathBuf,
}

/// A tab, by its DevTools session.
pub struct Page {
    session: String,
}

impl Browser {
    /// Starts Chromium in network namespace `netns` (the pages it opens are addressed from
    /// there), its profile under `dir`.
    pub fn start(netns: &Path, dir: &Path) -> Result<Self> {
        let binary = ["chromium", "chromium-browser"]
            .iter()
            .find_map(|name| crate::prometheus::which(name).ok())
            .context("Chromium is not installed: `cargo xtask setup` installs it")?;
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let (browser_reads, to_browser) = std::io::pipe()?;
        let (from_browser, browser_writes) = std::io::pipe()?;
        let log = std::fs::File::create(dir.join("chromium.log"))?;
        let mut command = Command::new(binary);
        command
            .args([
                "--headless=new",
                // Root has no user namespace sandbox here; the pages are the test's own.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-extensions",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--window-size=1400,1000",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let (read_fd, write_fd) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2). The ends
        // are first copied above 10, so that neither can be overwritten by the other's move
        // and both lose close-on-exec, then moved where Chromium's --remote-debugging-pipe
        // expects them: 3 reads, 4 writes.
        unsafe {
            command.pre_exec(move || {
                let read = libc::fcntl(read_fd, libc::F_DUPFD, 10);
                let write = libc::fcntl(write_fd, libc::F_DUPFD, 10);
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = crate::sys::in_netns(netns, || command.spawn())??;
        drop((browser_reads, browser_writes));
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from_browser);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        message.pop_if(|b| *b == 0);
                        if let Ok(value) = serde_json::from_slice::<Value>(&message)
                            && sender.send(value).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            process,
            to_browser,
            from_browser: receiver,
            next_id: 0,
            _profile: profile,
        };
        browser
            .call(None, "Browser.getVersion", json!({}))
            .context("Chromium did not answer on its DevTools pipe")?;
        Ok(browser)
    }

    /// Chromium's product and version, as it says.
    pub fn version(&mut self) -> Result<String> {
        let version = self.call(None, "Browser.getVersion", json!({}))?;
        Ok(version["product"].as_str().unwrap_or_default().to_owned())
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.to_browser.write_all(&bytes)?;
        let deadline = Instant::now() + CALL_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .from_browser
                .recv_timeout(left)
                .with_context(|| format!("{method}: no answer"))?;
            if answer["id"].as_u64() != Some(id) {
                // An event, or an answer to an earlier call given up on.
                continue;
            }
            if let Some(error) = answer.get("error") {
                bail!("{method}: {error}");
            }
            return Ok(answer["result"].clone());
        }
    }

    /// Opens `url` in a new tab and waits until it has loaded.
    pub fn open(&mut self, url: &str) -> Result<Page> {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}))?;
        let target = target["targetId"].as_str().context("no target")?.to_owned();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        )?;
        let session = attached["sessionId"]
            .as_str()
            .context("no session")?
            .to_owned();
        let page = Page { session };
        self.call(Some(&page.session), "Page.enable", json!({}))?;
        self.call(Some(&page.session), "Page.navigate", json!({"url": url}))?;
        self.wait(
            &page,
            "the page to load",
            Duration::from_secs(30),
            |b, p| Ok(b.eval(p, "document.readyState")? == "complete"),
        )?;
        Ok(page)
    }

    /// Runs `expression` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, page: &Page, expression: &str) -> Result<Value> {
        let result = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `check` until it holds.
    pub fn wait(
        &mut self,
        page: &Page,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&mut Self, &Page) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if check(self, page)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("never reached in the browser: {what}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Saves a PNG of the whole page.
    pub fn screenshot(&mut self, page: &Page, path: &Path) -> Result<()> {
        let shot = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().context("no screenshot data")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, data)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
