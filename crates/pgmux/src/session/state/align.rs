//! A client's settings on a server: bringing a server in line with its
//! client before a request, and learning how the server spells the values a
//! client gave at login (PostgreSQL reports `client_encoding=utf8` back as
//! `UTF8`, `datestyle=iso,dmy` as `ISO, DMY`), so the client is told what a
//! direct connection would tell it.

use crate::params::{set_statements, ParamMap};
use crate::pool::{Checkout, Pool};
use crate::server::{Server, ServerError};
use crate::session::ClientError;

/// Bring `server`'s settings in line with `client`'s. Reported settings
/// come back from the server in its own spelling, which the client adopts;
/// afterwards both share one map.
///
/// A [`ServerError::Backend`] (the server refused a value) leaves the server
/// idle and usable; any other error leaves it broken.
pub(in crate::session) async fn align(
    client: &mut ParamMap,
    pool: &Pool,
    server: &mut Server,
) -> Result<(), ServerError> {
    let wanted: Vec<(String, String)> = client
        .differences(&server.params)
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let resets: Vec<String> = client
        .extras(&server.params)
        .iter()
        .map(|n| n.to_string())
        .collect();
    if !wanted.is_empty() || !resets.is_empty() {
        let sets: Vec<(&str, &str)> = wanted
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let reset_names: Vec<&str> = resets.iter().map(String::as_str).collect();
        server.run(&set_statements(&sets, &reset_names)).await?;
        for name in &resets {
            server.params.remove(name);
        }
        for (name, value) in &wanted {
            if pool.reports(name) {
                if let Some(canonical) = server.params.get(name).map(str::to_string) {
                    pool.spellings.learn(name, value, &canonical);
                    client.set(name, &canonical);
                }
            } else {
                // Not reported by the server: remember what was set.
                server.params.set(name, value);
            }
        }
    }
    // Now alike: share one map, so the next check is a pointer compare.
    server.params = client.clone();
    Ok(())
}

/// Transaction mode, at login: the client's startup settings as the server
/// would report them. Spellings already learnt cost nothing; an unknown
/// one costs one round trip on a borrowed server, once per pool, and a
/// value the server refuses refuses the login, as PostgreSQL would.
pub(in crate::session) async fn spell_like_server(
    pool: &std::sync::Arc<Pool>,
    defaults: &ParamMap,
    client: &mut ParamMap,
) -> Result<(), ClientError> {
    let mut unknown = false;
    let given: Vec<(String, String)> = client
        .differences(defaults)
        .into_iter()
        .filter(|(name, _)| pool.reports(name))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    for (name, value) in &given {
        match pool.spellings.spelling(name, value) {
            Some(canonical) => client.set(name, &canonical),
            None => unknown = true,
        }
    }
    if !unknown {
        return Ok(());
    }
    let mut checkout: Checkout = pool.checkout().await?;
    match align(client, pool, checkout.server_mut()).await {
        Ok(()) => {
            checkout.checkin();
            Ok(())
        }
        Err(e) => Err(failed(checkout, e)),
    }
}

/// Give back a server whose alignment failed (checked in if it only
/// refused a value, closed if it broke) and say what the client hears: a
/// refused value in the server's own words, as a direct connection would
/// give them, or a lost server.
pub(in crate::session) fn failed(checkout: Checkout, e: ServerError) -> ClientError {
    if matches!(e, ServerError::Backend(_)) {
        checkout.checkin();
    } else {
        checkout.discard(crate::stats::CloseReason::Error);
    }
    client_error(e)
}

pub(in crate::session) fn client_error(e: ServerError) -> ClientError {
    match e {
        ServerError::Backend(e) => ClientError::fatal(&e.code, e.message),
        e => ClientError::fatal(e.sqlstate(), format!("server connection lost: {e}")),
    }
}
