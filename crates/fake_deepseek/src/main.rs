//! `fake_deepseek [--addr 127.0.0.1:9000] [--key KEY] [--chunks N] [--chunk-delay-ms MS]`
//!
//! Runs the fake DeepSeek on its own, for manual checks and benchmarks.

use fake_deepseek::{Behavior, FakeDeepSeek};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut addr = "127.0.0.1:9000".to_owned();
    let mut behavior = Behavior::default();
    let mut key = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match flag.as_str() {
            "--addr" => addr = value(),
            "--key" => key = Some(value()),
            "--chunks" => behavior.chunks = value().parse().unwrap_or(behavior.chunks),
            "--chunk-delay-ms" => behavior.chunk_delay_ms = value().parse().unwrap_or(0),
            _ => {
                eprintln!("usage: fake_deepseek [--addr HOST:PORT] [--key KEY] [--chunks N] [--chunk-delay-ms MS]");
                std::process::exit(2);
            }
        }
    }
    let fake = FakeDeepSeek::start_on(&addr).await?;
    if let Some(key) = key {
        fake.require_key(&key);
    }
    fake.set_default(behavior);
    println!("fake DeepSeek listening on {}", fake.base_url());
    println!("  Anthropic base_url: http://{}/anthropic", fake.addr());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
