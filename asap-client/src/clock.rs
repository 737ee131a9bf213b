//! The drivers' clock, shared by the PE and PU drivers here and by the
//! exporter's stream driver (a pool user's too): tokio's, so that a test can
//! pause or advance it (`tokio::time::pause`), handed to the sans-IO cores
//! as the `std::time::Instant` they take.

use std::time::Instant;

/// Now, by tokio's clock.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until `deadline` by tokio's clock, forever if there is none (a
/// core with no timer pending).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
