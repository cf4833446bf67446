//! Traps: executes `unreachable` through `std::process::abort`.
fn main() {
    println!("about to trap");
    std::process::abort();
}
