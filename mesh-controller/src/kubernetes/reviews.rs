//! Review answers (TokenReview, SubjectAccessReview), kept for a while, and a cap on how many
//! the API server is asked per second. Every CSR and every config subscription presents a
//! token: without the cache each costs a round trip to the API server, and a pod replaying a
//! token (or a bad one) in a loop would make the controller hammer it.

use std::{
    collections::HashMap,
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

/// How long an answer is kept: an accepted token for a minute (a deleted pod's token then
/// works at most that much longer), a refused one for ten seconds.
const ACCEPTED_TTL: Duration = Duration::from_secs(60);
const REFUSED_TTL: Duration = Duration::from_secs(10);
/// Reviews asked of the API server per second, at most; past it, unknown tokens are refused
/// until the next second.
pub const REVIEWS_PER_SECOND: u32 = 50;
/// Answers kept at most; past it the oldest go first.
const MAX_ENTRIES: usize = 10_000;

/// Answers of one kind of review: `Some` an acceptance (who a token is; `()` for an allowed
/// access), `None` a refusal.
pub struct Reviews<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for Reviews<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                answers: HashMap::new(),
                window: None,
            }),
        }
    }
}

struct State<T> {
    /// By the question's SHA-256 (tokens themselves are not kept): when it was answered, and
    /// what.
    answers: HashMap<[u8; 32], (Instant, Option<T>)>,
    /// The current one-second window and the reviews asked in it.
    window: Option<(Instant, u32)>,
}

impl<T: Clone> Reviews<T> {
    /// The answer to `question` (a token, or who asks for what): from a recent answer, or by
    /// `review` when the rate allows; `None` when refused, or when over the rate.
    pub async fn answer<F>(&self, question: &str, review: impl FnOnce() -> F) -> Option<T>
    where
        F: Future<Output = Option<T>>,
    {
        let key: [u8; 32] = Sha256::digest(question.as_bytes()).into();
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if let Some((at, answer)) = state.answers.get(&key) {
                let ttl = if answer.is_some() {
                    ACCEPTED_TTL
                } else {
                    REFUSED_TTL
                };
                if now - *at < ttl {
                    return answer.clone();
                }
            }
            let window = match state.window {
                Some((start, count)) if now - start < Duration::from_secs(1) => (start, count),
                _ => (now, 0),
            };
            if window.1 >= REVIEWS_PER_SECOND {
                tracing::warn!(
                    limit = REVIEWS_PER_SECOND,
                    "too many reviews this second; refusing until the next"
                );
                return None;
            }
            state.window = Some((window.0, window.1 + 1));
        }
        let answer = review().await;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.answers.len() >= MAX_ENTRIES {
            let now = Instant::now();
            state.answers.retain(|_, (at, answer)| {
                now - *at
                    < if answer.is_some() {
                        ACCEPTED_TTL
                    } else {
                        REFUSED_TTL
                    }
            });
            if state.answers.len() >= MAX_ENTRIES {
                state.answers.clear();
            }
        }
        state.answers.insert(key, (Instant::now(), answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::ca_service::Caller;

    #[tokio::test]
    async fn answers_are_kept_and_reviews_are_capped() {
        let reviews = Reviews::default();
        let asked = AtomicU32::new(0);
        let review = |caller: Option<Caller>| {
            asked.fetch_add(1, Ordering::SeqCst);
            async move { caller }
        };
        let node = Some(Caller::Node("n0".to_owned()));
        assert_eq!(reviews.answer("good", || review(node.clone())).await, node);
        assert_eq!(reviews.answer("good", || review(None)).await, node, "kept");
        assert_eq!(reviews.answer("bad", || review(None)).await, None);
        assert_eq!(
            reviews.answer("bad", || review(node.clone())).await,
            None,
            "kept"
        );
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // A flood of different tokens: at most the cap reaches the API server this second.
        for i in 0..200 {
            let _ = reviews.answer(&format!("t{i}"), || review(None)).await;
        }
        assert!(asked.load(Ordering::SeqCst) <= REVIEWS_PER_SECOND + 2);
        // A known token still answers from the cache while the cap holds.
        assert_eq!(reviews.answer("good", || review(None)).await, node);
    }
}
