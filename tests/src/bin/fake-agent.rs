//! The fake coding agent of the multi-process tests: the demo's simulated agent
//! (`argus_controller::demo::agent`), as its own binary. `fake-agent MODE [ARG]`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("idle");
    argus_controller::demo::agent(mode, args.get(2).map(String::as_str))
}
