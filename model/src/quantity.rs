//! Resource quantities as Bacalhau writes them: CPU in Kubernetes form (`2`, `0.5`, `500m`), memory and
//! disk in go-humanize or Kubernetes form (`512Mb` = 512·10⁶ bytes, `2GiB`/`2Gi` = 2·2³⁰), GPU a count.

/// Parses a CPU quantity into millicores.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty CPU quantity".into());
    }
    let (num, scale) = match t.strip_suffix('m') {
        Some(n) => (n, 1.0),
        None => (t, 1000.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a CPU quantity"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a CPU quantity"));
    }
    let milli = (v * scale).round();
    if milli > 1e12 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(milli as u64)
}

/// Parses a byte quantity.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("{s:?} is not a size"));
    }
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let mult: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "p" | "pb" => 1e15,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024f64.powi(4),
        "pi" | "pib" => 1024f64.powi(5),
        _ => return Err(format!("{s:?} has an unknown unit {unit:?}")),
    };
    let bytes = (v * mult).round();
    if !bytes.is_finite() || bytes > 9.0e18 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes as u64)
}

/// Formats bytes for people (`1.5 GiB`).
pub fn format_bytes(b: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("0.25"), Ok(250));
        assert!(parse_cpu("two").is_err());
        assert!(parse_cpu("-1").is_err());
    }

    #[test]
    fn byte_quantities_follow_humanize_and_kubernetes() {
        assert_eq!(parse_bytes("1Gb"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("1Zb").is_err());
        assert!(parse_bytes("lots").is_err());
    }
}
