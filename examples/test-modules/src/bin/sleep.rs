//! Runs for N seconds (its first argument, default 10), printing one line a second, then "done":
//! a job long enough to be cut off, killed or failed over while it runs (the chaos tests).
use std::io::Write;
use std::time::Duration;

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    println!("sleeping {secs} s");
    for i in 1..=secs {
        std::thread::sleep(Duration::from_secs(1));
        println!("tick {i}");
        let _ = std::io::stdout().flush();
    }
    println!("done");
}
