//! Runs the example app: Herald's routes and the app's own on one port, until Ctrl-C.
//!
//! `PORT` picks the port on 127.0.0.1 (default 3000); `JWT_SECRET` the HS256 secret for
//! user tokens (default: a demo secret, fine on loopback only).

use std::error::Error;
use std::net::SocketAddr;

use herald_example_axum_app::{Sessions, app, serve_hooks};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let port = match std::env::var("PORT") {
        Ok(p) => p.parse::<u16>().map_err(|e| format!("PORT must be a port number, not `{p}`: {e}"))?,
        Err(_) => 3000,
    };
    let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| "demo-secret-change-me-in-production".to_owned());
    let mut config = herald::Config { listen: SocketAddr::from(([127, 0, 0, 1], port)), ..herald::Config::default() };
    config.auth.jwt_secret = Some(secret);
    let sessions = Sessions::default();
    serve_hooks(&mut config, sessions.clone()).await?;
    let herald = herald::Herald::new(config)?;
    let server = herald::Server::bind_with_router(herald.clone(), app(herald, sessions)).await?;
    println!("listening on http://{}", server.local_addr()?);
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
