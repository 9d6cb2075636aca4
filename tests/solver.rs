//! `kacme solver` over a real socket: the real binary, real TCP, real HTTP.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Solver {
    child: Child,
    address: SocketAddr,
}

impl Drop for Solver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_solver() -> Solver {
    start_solver_for("T0k3n-abc_DEF")
}

/// Starts `kacme solver` on a port the kernel picks (`--listen 127.0.0.1:0`) and learns the address from
/// its "solver listening" log line. (Picking a free port first and passing it raced with the tests beside:
/// two solvers given the same port, one failed to bind, and its test talked to the other test's solver,
/// which that test then stopped: "connection reset by peer".)
fn start_solver_for(token: &str) -> Solver {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kacme"))
        .args(["solver", "--listen", "127.0.0.1:0", "--domain", "app.example.test"])
        .arg(format!("--token={token}"))
        .arg(format!("--key-authorization={token}.thumbprint"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    // Reads the log to its end, so that the solver never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let line = common::without_colours(&line);
            if line.contains("solver listening")
                && let Some((_, rest)) = line.split_once("address=")
            {
                let address: String =
                    rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
                let _ = sender.send(address);
            }
        }
    });
    let address = receiver.recv_timeout(Duration::from_secs(10)).expect("the solver logs the address it listens on");
    Solver { child, address: address.parse().unwrap() }
}

/// Sends one raw HTTP/1.1 request and returns (status, headers, body).
fn request(address: SocketAddr, method: &str, host: Option<&str>, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let host_line = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn the_solver_serves_its_key_authorization_and_nothing_else() {
    let solver = start_solver();
    let path = "/.well-known/acme-challenge/T0k3n-abc_DEF";
    let (status, headers, body) = request(solver.address, "GET", Some("app.example.test:5002"), path);
    assert_eq!(status, 200);
    assert_eq!(body, "T0k3n-abc_DEF.thumbprint");
    assert!(headers.contains("cache-control: no-cache"), "{headers}");

    // (case, method, host, path)
    let refused = [
        ("wrong host", "GET", Some("evil.example.test"), path),
        ("wrong token", "GET", Some("app.example.test"), "/.well-known/acme-challenge/other"),
        ("another path", "GET", Some("app.example.test"), "/index.html"),
        ("no Host header", "GET", None, path),
        ("POST", "POST", Some("app.example.test"), path),
    ];
    for (case, method, host, path) in refused {
        let (status, headers, _) = request(solver.address, method, host, path);
        // HTTP/1.1 without Host is a client error to hyper itself (400); everything else is our 404.
        let expected = if host.is_none() { [400, 404] } else { [404, 404] };
        assert!(expected.contains(&status), "{case}: got {status}");
        if status == 404 {
            assert!(headers.contains("cache-control: no-cache"), "{case}: {headers}");
        }
    }
    let (status, _, body) = request(solver.address, "GET", Some("anything"), "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn the_solver_stops_cleanly_on_sigterm() {
    let mut solver = start_solver();
    let pid = solver.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = solver.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the solver did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(TcpStream::connect(solver.address).is_err(), "the port is released");
}

#[test]
fn a_token_that_starts_with_a_dash_is_a_value_not_a_flag() {
    // base64url tokens may start with '-'; solver Pods pass values with '='.
    let solver = start_solver_for("-G1rt26kNswX");
    let (status, _, body) =
        request(solver.address, "GET", Some("app.example.test"), "/.well-known/acme-challenge/-G1rt26kNswX");
    assert_eq!((status, body.as_str()), (200, "-G1rt26kNswX.thumbprint"));
}
