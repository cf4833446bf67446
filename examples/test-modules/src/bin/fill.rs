//! Writes N MiB (its first argument; without one, until it is stopped) to `/outputs/fill.bin`, one
//! MiB every 20 ms, then prints "filled N MiB": a task that outgrows its disk limit.
use std::io::Write;
use std::time::Duration;

fn main() {
    let mib: Option<u64> = std::env::args().nth(1).and_then(|a| a.parse().ok());
    let mut f = std::fs::File::create("/outputs/fill.bin").expect("create /outputs/fill.bin");
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0u64;
    while mib.is_none_or(|m| written < m) {
        f.write_all(&chunk).expect("write");
        f.flush().expect("flush");
        written += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("filled {written} MiB");
}
