//! Starts `moto_server` (the AWS API emulator from PyPI) once per test binary
//! on a free loopback port (and one more for a test that needs its own). It stops when the test process exits: a shell
//! wrapper waits on a pipe from this process and kills moto when it closes.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Moto {
    pub endpoint: String,
    /// The server's process id.
    pid: Option<u32>,
    // Held open for the life of the process; closing it stops moto.
    _lifeline: ChildStdin,
    _child: Child,
}

const INSTALL_HINT: &str = "moto_server is needed for the AWS half of the tests. \
Run the README's test command (infra/scripts/test.sh), which installs it into .venv, \
or `python3 -m pip install 'moto[server]'`, or set MAOF_MOTO_SERVER to its path.";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Where moto_server is: `MAOF_MOTO_SERVER`, the project's `.venv`, or PATH.
fn moto_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("MAOF_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let venv = workspace_root().join(".venv/bin/moto_server");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("moto_server"))
            .find(|p| p.exists())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

/// The Python that runs `moto_server`: its shebang's interpreter, which
/// has moto installed.
fn moto_python(moto_server: &Path) -> PathBuf {
    std::fs::read_to_string(moto_server)
        .ok()
        .and_then(|text| {
            let first = text.lines().next()?;
            let interpreter = first.strip_prefix("#!")?.split_whitespace().next()?;
            Some(PathBuf::from(interpreter))
        })
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Starts moto, at the scheduling priority `nice` (0: the caller's): its
/// server with DynamoDB's atomicity (`tests/moto_atomic.py`), run by the
/// Python of the `moto_server` found.
fn start(nice: u8) -> Moto {
    let moto_server = moto_binary().unwrap_or_else(|| panic!("{INSTALL_HINT}"));
    let python = moto_python(&moto_server);
    let launcher = workspace_root().join("tests/moto_atomic.py");
    let port = free_port();
    let script = if nice == 0 {
        r#""$0" "$4" -H 127.0.0.1 -p "$1" >"$2" 2>&1 & pid=$!; echo "started $pid"; read _; kill $pid"#
    } else {
        r#"nice -n "$3" "$0" "$4" -H 127.0.0.1 -p "$1" >"$2" 2>&1 & pid=$!; echo "started $pid"; read _; kill $pid"#
    };
    let log = std::env::temp_dir().join(format!("maof-moto-{port}.log"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&python)
        .arg(port.to_string())
        .arg(&log)
        .arg(nice.to_string())
        .arg(&launcher)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}. {INSTALL_HINT}", python.display()));
    let lifeline = child.stdin.take().expect("stdin is piped");
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    let pid = line
        .trim()
        .strip_prefix("started ")
        .and_then(|p| p.parse().ok());
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "moto_server ({}) did not listen on port {port} within 30 s. Its output:\n{output}\n{INSTALL_HINT}",
                moto_server.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Moto {
        endpoint: format!("http://127.0.0.1:{port}"),
        pid,
        _lifeline: lifeline,
        _child: child,
    }
}

impl Drop for Moto {
    /// A dedicated server stops with its owner, not only with the process:
    /// a load test's moto would otherwise keep serving (and spending CPU)
    /// for the rest of the suite.
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = Command::new("kill")
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The shared moto server of this test process, started on first use.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| start(0))
}

/// A moto server of the caller's own, stopped when dropped, at the
/// scheduling priority `nice`: for a load test, which would otherwise slow
/// the shared one, and the tests running beside it, down.
pub fn dedicated(nice: u8) -> Moto {
    start(nice)
}

/// An SDK configuration pointed at the shared moto, with dummy credentials.
pub async fn sdk_config() -> aws_config::SdkConfig {
    sdk_config_at(&moto().endpoint).await
}

/// An SDK configuration pointed at `endpoint`, with dummy credentials.
pub async fn sdk_config_at(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dedicated_server_stops_when_dropped() {
        let moto = super::dedicated(0);
        let pid = moto.pid.expect("the wrapper says the server's pid");
        let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
        assert!(alive());
        drop(moto);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // A zombie until its parent shell reaps it is stopped too.
        let stopped = !alive()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.split_whitespace().nth(2) == Some("Z"));
        assert!(stopped, "moto {pid} still runs after its owner dropped it");
    }
}
