//! An in-process HTTP-01 responder for engine tests: a `ChallengeSolver` that serves every presented
//! challenge from one listener (the address the CA dials), routing by Host and token like an ingress.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kacme::acme::{ChallengeSolver, Http01Challenge, Presentation, SolverError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What the responder answers, per (host, token).
type Answers = Arc<Mutex<HashMap<(String, String), String>>>;

/// Serves presented challenges on a socket until dropped.
pub struct ChallengeServer {
    answers: Answers,
    /// When set, every challenge is answered with this instead of its key authorization.
    pub wrong_answer: Option<String>,
    presented: Arc<Mutex<Vec<String>>>,
    cleaned: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ChallengeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn host_of(request: &Request<Incoming>) -> String {
    let host = request.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default().to_string()
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).to_string()
    };
    host.to_ascii_lowercase()
}

impl ChallengeServer {
    /// Listens on `address` (the address and port the CA dials for HTTP-01).
    pub async fn start(address: SocketAddr) -> ChallengeServer {
        let listener = tokio::net::TcpListener::bind(address).await.expect("bind the challenge responder");
        let answers: Answers = Arc::default();
        let served = answers.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let answers = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let token = request
                            .uri()
                            .path()
                            .strip_prefix(kacme::solver::CHALLENGE_PATH_PREFIX)
                            .unwrap_or_default()
                            .to_string();
                        let answer = answers.lock().unwrap().get(&(host_of(&request), token)).cloned();
                        async move {
                            let mut response =
                                Response::new(Full::new(Bytes::from(answer.clone().unwrap_or_default())));
                            if answer.is_none() {
                                *response.status_mut() = StatusCode::NOT_FOUND;
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ChallengeServer { answers, wrong_answer: None, presented: Arc::default(), cleaned: Arc::default(), task }
    }

    /// Identifiers presented so far.
    pub fn presented(&self) -> Vec<String> {
        self.presented.lock().unwrap().clone()
    }

    /// Identifiers cleaned up so far.
    pub fn cleaned(&self) -> Vec<String> {
        self.cleaned.lock().unwrap().clone()
    }

    /// Challenges being served right now.
    pub fn serving(&self) -> usize {
        self.answers.lock().unwrap().len()
    }
}

impl ChallengeSolver for ChallengeServer {
    async fn present(&self, challenge: &Http01Challenge) -> Result<Presentation, SolverError> {
        let answer = self.wrong_answer.clone().unwrap_or_else(|| challenge.key_authorization.clone());
        let host = challenge.identifier.to_ascii_lowercase();
        self.answers.lock().unwrap().insert((host, challenge.token.clone()), answer);
        self.presented.lock().unwrap().push(challenge.identifier.clone());
        Ok(Presentation::Ready)
    }

    async fn cleanup(&self, challenge: &Http01Challenge) -> Result<(), SolverError> {
        let host = challenge.identifier.to_ascii_lowercase();
        self.answers.lock().unwrap().remove(&(host, challenge.token.clone()));
        self.cleaned.lock().unwrap().push(challenge.identifier.clone());
        Ok(())
    }
}
