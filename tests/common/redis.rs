//! A real Redis for tests: our own `redis-server` on a free port (from PATH),
//! or the one at `REDIS_URL`. Without either, Redis tests are skipped loudly,
//! and when `CI` is set they fail instead, so CI always exercises Redis.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct TestRedis {
    pub url: String,
    pub port: Option<u16>,
    /// Isolates this test's keys from every other test on the same server.
    pub prefix: String,
    server: Option<Child>,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("addr").port()
}

fn skip_or_fail(why: &str) -> Option<TestRedis> {
    if std::env::var_os("CI").is_some() {
        panic!("Redis tests cannot run: {why} (CI is set, so this fails instead of skipping)");
    }
    eprintln!("\n!!! SKIPPED: Redis tests need redis-server on PATH or REDIS_URL: {why} !!!\n");
    None
}

impl TestRedis {
    /// A Redis for one test, or `None` (skipped loudly) when there is none.
    pub async fn start() -> Option<TestRedis> {
        let prefix = format!("test-{}:", super::random_hex());
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Some(TestRedis {
                url,
                port: None,
                prefix,
                server: None,
            });
        }
        Self::own(prefix).await
    }

    /// Our own server, which a test may stop and restart. `None` (skipped
    /// loudly, or failing under CI) when `redis-server` is not on PATH.
    pub async fn own(prefix: String) -> Option<TestRedis> {
        let port = free_port();
        let server = match spawn_server(port) {
            Ok(child) => child,
            Err(e) => return skip_or_fail(&format!("cannot run redis-server: {e}")),
        };
        let redis = TestRedis {
            url: format!("redis://127.0.0.1:{port}/"),
            port: Some(port),
            prefix,
            server: Some(server),
        };
        redis.wait_until_up().await;
        Some(redis)
    }

    pub async fn wait_until_up(&self) {
        for _ in 0..200 {
            if self.connection().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server at {} did not come up", self.url);
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(conn)
    }

    /// The `[state]` lines for a gateway on this Redis.
    pub fn state_toml(&self, lease_ttl_seconds: u64) -> String {
        format!(
            "backend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{}\"\nlease_ttl_seconds = {}\nredis_timeout_ms = 300\n",
            self.url, self.prefix, lease_ttl_seconds
        )
    }

    /// Keys under this test's prefix matching `pattern` (e.g. `slot:*`).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.connection().await.expect("redis connection");
        let pattern = format!("{}{pattern}", self.prefix);
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("scan");
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// Stops our own server (as a crash would: no save, no goodbye).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts our own server again on the same port.
    pub async fn restart(&mut self) {
        let port = self.port.expect("only our own server can restart");
        self.server = Some(spawn_server(port).expect("restart redis-server"));
        self.wait_until_up().await;
    }
}

fn spawn_server(port: u16) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &std::env::temp_dir().to_string_lossy(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
