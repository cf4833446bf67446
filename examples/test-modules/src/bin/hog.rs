//! Allocates memory until it fails.
fn main() {
    println!("hogging");
    let mut keep: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 4 << 20];
        chunk[0] = 1;
        keep.push(chunk);
        std::hint::black_box(&keep);
    }
}
