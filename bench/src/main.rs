//! strait-bench: measures strait against direct connections and other
//! proxies on the lab. The scenarios land with the benchmark issue.

fn main() {
    eprintln!("strait-bench: no scenarios yet");
    std::process::exit(2);
}
