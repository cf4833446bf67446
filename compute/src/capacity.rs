//! The machine's capacity: cores, memory (`/proc/meminfo`), disk of the data directory, NVIDIA GPUs
//! (`nvidia-smi`), and the labels Bacalhau adds to every node.

use std::collections::BTreeMap;
use std::path::Path;

use caravel_model::execution::Resources;

/// Cores, total memory and total disk of the file system holding `data_dir`.
pub fn machine_capacity(data_dir: &Path) -> Resources {
    Resources {
        cpu: cores() as f64,
        memory: total_memory().unwrap_or(0),
        disk: disk_total(data_dir).unwrap_or(0),
        gpu: gpu_count(),
    }
}

/// NVIDIA GPUs of the machine (`nvidia-smi --list-gpus`); 0 when nvidia-smi is absent or fails,
/// so a job asking for GPUs is never placed here.
pub fn gpu_count() -> u64 {
    static COUNT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        match std::process::Command::new("nvidia-smi")
            .arg("--list-gpus")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => count_gpus(&String::from_utf8_lossy(&out.stdout)),
            Ok(_) => 0,
            Err(_) => 0,
        }
    })
}

fn count_gpus(list: &str) -> u64 {
    list.lines()
        .filter(|l| l.trim_start().starts_with("GPU "))
        .count() as u64
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text, "MemTotal")
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text, "MemAvailable")
}

fn parse_meminfo(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    let mut parts = line.split(':').nth(1)?.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    let mult = match parts.next() {
        Some(u) if u.eq_ignore_ascii_case("kb") => 1024,
        None => 1,
        Some(_) => 1024,
    };
    n.checked_mul(mult)
}

/// Total bytes of the file system holding `path` (or its nearest existing ancestor).
pub fn disk_total(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    st.f_blocks.checked_mul(st.f_frsize)
}

/// Bacalhau's automatic labels: `os_type`, `os_arch`, `name`.
pub fn default_labels(node_name: &str) -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    BTreeMap::from([
        ("os_type".to_string(), std::env::consts::OS.to_string()),
        ("os_arch".to_string(), arch.to_string()),
        ("name".to_string(), node_name.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses_kilobytes() {
        let t = "MemTotal:        2030000 kB\nMemFree:  10 kB\nMemAvailable: 1000 kB\n";
        assert_eq!(parse_meminfo(t, "MemTotal"), Some(2030000 * 1024));
        assert_eq!(parse_meminfo(t, "MemAvailable"), Some(1000 * 1024));
        assert_eq!(parse_meminfo(t, "Nope"), None);
    }

    #[test]
    fn gpus_are_counted_from_nvidia_smi_lines() {
        let out = "GPU 0: NVIDIA A100 (UUID: GPU-1)\nGPU 1: NVIDIA A100 (UUID: GPU-2)\n";
        assert_eq!(count_gpus(out), 2);
        assert_eq!(count_gpus(""), 0);
    }

    #[test]
    fn this_machine_has_capacity() {
        let c = machine_capacity(Path::new("/tmp/definitely/not/here"));
        assert!(c.cpu >= 1.0);
        assert!(c.memory > 0);
        assert!(c.disk > 0);
        assert_eq!(default_labels("n1")["name"], "n1");
    }
}
