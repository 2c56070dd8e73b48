// Until the daemon's main wires them in, parts of these modules are used only by tests.
#[allow(dead_code)]
mod api;
#[allow(dead_code)]
mod store;

fn main() {}
