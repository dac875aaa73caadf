//! The support module of the end-to-end tests and the benchmarks (which include it by path): a
//! project directory with a config, the real `bqsync` binary as a child process, queries on the
//! resulting DuckDB file, workload generators, emulator helpers, a loopback HTTP client and `wait4`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Project {
    pub dir: tempfile::TempDir,
    /// Processes started in the background, killed on drop if still running (a failed assertion
    /// must not leave bqsync processes behind).
    spawned: std::sync::Mutex<Vec<u32>>,
}

impl Drop for Project {
    fn drop(&mut self) {
        for pid in self.spawned.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            // Only a process still working in this project's folder: the PID may have been reused.
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
            if cwd.is_ok_and(|cwd| cwd == self.dir.path()) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}

impl Project {
    /// A project directory with the repository's schemas and a config file with `extra` appended.
    pub fn new(extra_config: &str) -> Project {
        let mut dir = tempfile::tempdir().expect("tempdir");
        // BQSYNC_KEEP_PROJECTS=1 leaves every project folder behind, to inspect after a failure.
        if std::env::var_os("BQSYNC_KEEP_PROJECTS").is_some() {
            dir.disable_cleanup(true);
        }
        let schemas = dir.path().join("schemas");
        std::fs::create_dir_all(&schemas).unwrap();
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), schemas.join(entry.file_name())).unwrap();
        }
        let config = format!(
            "[worker]\nmax_batch_age_ms = 100\n\n[bus.embedded]\nsynchronous = \"normal\"\n\n[warehouse.duckdb]\nthreads = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{extra_config}\n"
        );
        std::fs::write(dir.path().join("bqsync.toml"), config).unwrap();
        // The default JSONL source's root: bqsync refuses to start on a root that does not exist.
        std::fs::create_dir_all(dir.path().join("inbox")).unwrap();
        Project { dir, spawned: std::sync::Mutex::new(Vec::new()) }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bqsync"));
        // BQSYNC_TEST_LOG raises the children's log level (e.g. `debug`) to trace a failure.
        let level = std::env::var("BQSYNC_TEST_LOG").unwrap_or_else(|_| "warn".into());
        command.args(args).current_dir(self.dir.path()).env("BQSYNC_LOG", level).stdin(Stdio::null());
        command
    }

    /// Starts `bqsync run` (watching) in the background.
    pub fn spawn_run(&self, extra_args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut args = vec!["run"];
        args.extend_from_slice(extra_args);
        self.spawn(&args, env)
    }

    /// Starts `bqsync ARGS` in the background, logging to `bqsync.log`.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut command = self.command(args);
        command.envs(env.iter().copied()).stdout(Stdio::null()).stderr(Stdio::from(self.log_file()));
        let child = command.spawn().expect("spawn bqsync");
        self.spawned.lock().unwrap().push(child.id());
        child
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.path("bqsync.log")).unwrap()
    }

    /// Runs `bqsync run --until-drained` to completion and asserts it succeeded.
    pub fn run_until_drained(&self, env: &[(&str, &str)]) {
        let mut child = self
            .command(&["run", "--until-drained"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(self.log_file()))
            .spawn()
            .unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(300));
        assert!(status.success(), "bqsync run --until-drained failed: {status}; log:\n{}", self.log_tail());
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.path("bqsync.log")).unwrap_or_default();
        log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn append(&self, relative: &str, bytes: &[u8]) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    }

    /// Opens the warehouse (only when no bqsync process holds it).
    #[cfg(feature = "embedded")]
    pub fn warehouse(&self) -> duckdb::Connection {
        duckdb::Connection::open(self.path("bqsync.duckdb")).expect("open warehouse")
    }

    #[cfg(feature = "embedded")]
    pub fn query_i64(&self, sql: &str) -> i64 {
        self.warehouse().query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Sum over file checkpoints of (file size - offset): 0 when every byte written so far is published.
    pub fn checkpoint_lag(&self) -> Option<u64> {
        let state = rusqlite::Connection::open(self.path(".bqsync/state.db")).ok()?;
        let mut statement = state.prepare("SELECT path, offset, inode FROM file_checkpoints").ok()?;
        let rows: Vec<(String, i64, i64)> =
            statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).ok()?.filter_map(Result::ok).collect();
        // Paths are stored as configured (relative to the project directory); a path that holds
        // another file now (rotation) does not count.
        Some(
            rows.iter()
                .filter_map(|(path, offset, inode)| {
                    let metadata = std::fs::metadata(self.dir.path().join(path)).ok()?;
                    (std::os::unix::fs::MetadataExt::ino(&metadata) == *inode as u64)
                        .then(|| metadata.len().saturating_sub(*offset as u64))
                })
                .sum(),
        )
    }

    /// Bytes of the file at `relative` not yet published: None while it has no checkpoint.
    pub fn file_lag(&self, relative: &str) -> Option<u64> {
        let metadata = std::fs::metadata(self.path(relative)).ok()?;
        let state = rusqlite::Connection::open(self.path(".bqsync/state.db")).ok()?;
        let offset: i64 = state
            .query_row(
                "SELECT offset FROM file_checkpoints WHERE inode = ?1",
                [std::os::unix::fs::MetadataExt::ino(&metadata) as i64],
                |r| r.get(0),
            )
            .ok()?;
        Some(metadata.len().saturating_sub(offset as u64))
    }

    /// Number of files with a checkpoint.
    pub fn checkpoint_count(&self) -> Option<i64> {
        let state = rusqlite::Connection::open(self.path(".bqsync/state.db")).ok()?;
        state.query_row("SELECT count(*) FROM file_checkpoints", [], |r| r.get(0)).ok()
    }

    /// Messages still on the bus (pending or leased).
    pub fn bus_depth(&self) -> Option<i64> {
        let bus = rusqlite::Connection::open(self.path(".bqsync/bus.db")).ok()?;
        bus.query_row("SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM dlq_messages)", [], |r| r.get(0))
            .ok()
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a signal to a child.
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Waits for a child to exit, with a timeout.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bqsync did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One atoms line with a unique id.
pub fn atom_line(id: &str, n: u64) -> String {
    format!(
        "{{\"event_id\":\"{id}\",\"entity_id\":\"ent-{:07}\",\"kind\":\"click\",\"text\":\"line {n}\",\"score\":{}.5,\"tags\":[\"red\",\"eu\"],\"created_at\":\"2024-01-01T00:00:{:02}.000001Z\"}}\n",
        n % 100_000,
        n % 1000,
        n % 60
    )
}

#[cfg(feature = "embedded")]
pub fn dead_letter_reasons(project: &Project) -> HashMap<String, i64> {
    let connection = project.warehouse();
    let mut statement = connection.prepare("SELECT reason, count(*) FROM dead_letters GROUP BY reason").unwrap();
    statement
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Expected final state of a key: Some((version, email)) for a live row, None for a tombstone.
pub type ContactState = HashMap<String, Option<(i64, String)>>;

/// `events` contact events over `keys` keys (every key at least once), in shuffled order, versions
/// increasing per key; about 2 % are deletes. Returns the JSONL text and the correct final state.
pub fn contacts(events: usize, keys: usize, seed: u64) -> (String, ContactState) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut counts = vec![1usize; keys];
    for _ in keys..events {
        counts[rng.usize(0..keys)] += 1;
    }
    let mut lines = Vec::with_capacity(events);
    let mut expected: ContactState = HashMap::new();
    for (k, count) in counts.iter().enumerate() {
        let id = format!("c-{k:06}");
        let mut version = rng.i64(1..5);
        let mut best: Option<(i64, Option<(i64, String)>)> = None;
        for _ in 0..*count {
            let email = format!("user{}@example.com", rng.u32(..));
            let deleted = rng.u8(0..100) < 2;
            let line = if deleted {
                format!("{{\"contact_id\":\"{id}\",\"version\":{version},\"_deleted\":true}}")
            } else {
                format!("{{\"contact_id\":\"{id}\",\"name\":\"N {version}\",\"email\":\"{email}\",\"phone\":\"+1\",\"updated_at\":\"2024-01-01T00:00:00Z\",\"version\":{version}}}")
            };
            lines.push(line);
            best = Some((version, (!deleted).then_some((version, email))));
            version += rng.i64(1..4);
        }
        expected.insert(id, best.unwrap().1);
    }
    rng.shuffle(&mut lines);
    (lines.join("\n") + "\n", expected)
}

#[cfg(feature = "embedded")]
pub fn assert_contacts_match(project: &Project, expected: &ContactState) {
    let connection = project.warehouse();
    let mut statement =
        connection.prepare("SELECT contact_id, version, email, _bqsync_deleted FROM contacts_master").unwrap();
    let rows: Vec<(String, i64, Option<String>, bool)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), expected.len(), "one row (live or tombstone) per key");
    let mut wrong = 0;
    for (id, version, email, deleted) in &rows {
        let ok = match expected.get(id) {
            Some(Some((v, e))) => !deleted && version == v && email.as_deref() == Some(e.as_str()),
            Some(None) => *deleted && email.is_none(),
            None => false,
        };
        if !ok {
            wrong += 1;
        }
    }
    assert_eq!(wrong, 0, "{wrong} of {} keys differ from the highest version", expected.len());
    let live = expected.values().filter(|v| v.is_some()).count() as i64;
    assert_eq!(project.query_i64("SELECT count(*) FROM contacts_master WHERE NOT _bqsync_deleted"), live);
}

/// The URL of an emulator the test command started, from its variable (a URL or HOST:PORT). Panics
/// without it: emulator tests fail, never skip.
pub fn emulator_url(variable: &str) -> String {
    let host = std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run the tests with scripts/test.sh, which starts the emulators")
    });
    if host.contains("://") {
        host
    } else {
        format!("http://{host}")
    }
}

/// A name no other test run uses: PREFIX_TEST_PID_NANOS.
pub fn unique_name(prefix: &str, test: &str, separator: char) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}{separator}{test}{separator}{}{separator}{nanos}", std::process::id())
}

/// A BigQuery emulator of a test's own, to be cut (SIGKILL) and started again with its data.
pub struct OwnBigQuery {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnBigQuery {
    const SCRIPT: &'static str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/emulators/bigquery.sh");

    pub fn start() -> OwnBigQuery {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let emulator = OwnBigQuery { dir: tempfile::tempdir().unwrap(), port };
        emulator.run("start", false);
        emulator
    }

    /// Starts it again after [`OwnBigQuery::kill`], with the tables it had.
    pub fn restart_keeping_data(&self) {
        self.run("start", true);
    }

    fn run(&self, action: &str, keep_data: bool) {
        let status = Command::new("bash")
            .args([Self::SCRIPT, action, &self.dir.path().display().to_string(), &self.port.to_string()])
            .env("BIGQUERY_EMULATOR_KEEP_DATA", if keep_data { "1" } else { "0" })
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "bigquery.sh {action} failed");
    }

    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("pid")).unwrap();
        Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnBigQuery {
    fn drop(&mut self) {
        self.run("stop", false);
    }
}

/// A plain client on a BigQuery emulator, to look at what bqsync did.
#[cfg(feature = "gcp")]
pub async fn bigquery_client(endpoint: &str) -> gcp_bigquery_client::Client {
    gcp_bigquery_client::client_builder::ClientBuilder::new()
        .with_v2_base_url(format!("{endpoint}/bigquery/v2"))
        .build_from_authenticator(std::sync::Arc::new(bqsync::warehouse::bigquery::EmulatorToken))
        .await
        .unwrap()
}

/// The tables and views of a dataset on a BigQuery emulator, sorted.
#[cfg(feature = "gcp")]
pub async fn bigquery_table_names(endpoint: &str, project: &str, dataset: &str) -> Vec<String> {
    let tables = bigquery_client(endpoint).await.table().list(project, dataset, Default::default()).await.unwrap();
    let mut names: Vec<String> =
        tables.tables.unwrap_or_default().into_iter().map(|t| t.table_reference.table_id).collect();
    names.sort();
    names
}

/// Every row of a query on a BigQuery emulator, as JSON cells (BigQuery returns numbers as strings).
#[cfg(feature = "gcp")]
pub async fn bigquery_rows(endpoint: &str, project: &str, sql: &str) -> Vec<Vec<serde_json::Value>> {
    let mut request = gcp_bigquery_client::model::query_request::QueryRequest::new(sql);
    request.max_results = Some(1_000_000);
    let client = bigquery_client(endpoint).await;
    let response = client.job().query(project, request).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows: Vec<Vec<serde_json::Value>> = response
        .rows
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            r.columns.unwrap_or_default().into_iter().map(|c| c.value.unwrap_or(serde_json::Value::Null)).collect()
        })
        .collect();
    let total: usize = response.total_rows.as_deref().unwrap_or("0").parse().unwrap();
    assert_eq!(rows.len(), total, "all rows in one response for {sql}");
    rows
}

/// One HTTP/1.1 request with a JSON body to `host` (HOST:PORT) on loopback: the status and the body.
/// The Pub/Sub emulator serves its REST API on the gRPC port; the tests use it for what the Rust
/// client does not offer (seek).
pub fn http_json(host: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{BufRead, Read};
    let mut stream = std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("{host}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The emulator keeps the connection open despite `Connection: close`: read by Content-Length.
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    (status, body)
}

/// Seeks a Pub/Sub emulator subscription to a time (RFC 3339): every retained message published
/// after it that is not acked is delivered again.
pub fn pubsub_seek(host: &str, project: &str, subscription: &str, time: &str) {
    let path = format!("/v1/projects/{project}/subscriptions/{subscription}:seek");
    let (status, body) = http_json(host, "POST", &path, &format!("{{\"time\": \"{time}\"}}"));
    assert_eq!(status, 200, "seek {subscription}: {body}");
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The project's table definitions (`schemas/`).
pub fn catalog() -> bqsync::schema::Catalog {
    bqsync::schema::Catalog::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
}

/// One request to a bqsync admin server on loopback `port`, with a bearer token if given: (status,
/// body); `None` while nothing answers.
pub fn admin_http(port: u16, method: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Rows of `table` landed so far by a running process (new rows only: each event counts once), from
/// its admin server's metrics on loopback `port`; `None` while nothing answers.
pub fn landed_rows(port: u16, table: &str) -> Option<f64> {
    let (_, body) = admin_http(port, "GET", "/metrics", None)?;
    let prefix = format!("bqsync_rows_landed_total{{table=\"{table}\"}}");
    Some(
        body.lines().filter(|l| l.starts_with(&prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum(),
    )
}

/// Waits for one child: (exit code, user + system CPU seconds, peak RSS MB) of that process alone.
pub fn wait_with_usage(pid: libc::pid_t) -> (i32, f64, f64) {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes into the status and struct we own; the pid is our own child.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let exit = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (exit, seconds(usage.ru_utime) + seconds(usage.ru_stime), usage.ru_maxrss as f64 / 1024.0)
}

/// A `contacts_master` row as a worker stages it: event id `KEY@VERSION`, a tombstone when `deleted`.
pub fn staged_contact(
    schema: &bqsync::schema::TableSchema,
    key: &str,
    version: i64,
    email: Option<&str>,
    deleted: bool,
) -> bqsync::warehouse::StagedRow {
    use bqsync::schema::CellValue;
    let cells = schema
        .columns
        .iter()
        .map(|c| match c.name.as_str() {
            "contact_id" => CellValue::String(key.into()),
            "version" => CellValue::Int64(version),
            "email" if !deleted => email.map_or(CellValue::Null, |e| CellValue::String(e.into())),
            "name" if !deleted => CellValue::String(format!("N {version}")),
            _ => CellValue::Null,
        })
        .collect();
    bqsync::warehouse::StagedRow {
        event_id: format!("{key}@{version}"),
        op: if deleted { bqsync::envelope::Op::Delete } else { bqsync::envelope::Op::Upsert },
        version: Some(version),
        cells,
        absent: Vec::new(),
    }
}
