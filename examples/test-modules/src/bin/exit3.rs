//! Exits with code 3.
fn main() {
    println!("exiting with 3");
    eprintln!("bye");
    std::process::exit(3);
}
