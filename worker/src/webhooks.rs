//! The webhook loop every worker runs when `WEBHOOK_SECRET` is set: about once a second it
//! claims the deliveries that are due (`jobs::webhook::claim`, a lease in Postgres, so that each
//! attempt has one sender across every worker), sends each (at most
//! [`jobs::webhook::MAX_IN_FLIGHT`] at once) and records how it went. Stopped, it claims no more
//! and waits for the attempts in flight, each bounded by `WEBHOOK_TIMEOUT_SECONDS`.

use std::time::Duration;

use jobs::webhook::{self, Claim, Message, Outcome, Recorded, WebhookSettings};
use tokio::task::JoinSet;

use crate::ctx::Ctx;

/// How often due deliveries are looked for.
const TICK: Duration = Duration::from_secs(1);

/// Runs until `stop` resolves, then waits for the attempts in flight (at most the webhook
/// timeout and a few seconds to record them).
pub async fn run(ctx: Ctx, settings: WebhookSettings, stop: impl std::future::Future<Output = ()>) {
    tracing::info!(
        max_attempts = settings.max_attempts,
        allow_private = settings.allow_private,
        "sending webhooks"
    );
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut failing: Option<String> = None;
    tokio::pin!(stop);
    loop {
        while in_flight.try_join_next().is_some() {}
        if let Err(e) = tick(&ctx, &settings, &mut in_flight).await {
            let message = e.to_string();
            if failing.as_deref() != Some(message.as_str()) {
                tracing::warn!(error = %message, "cannot claim webhooks; retrying");
                failing = Some(message);
            }
        } else if failing.take().is_some() {
            tracing::info!("claiming webhooks again");
        }
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(TICK) => {}
        }
    }
    let limit = settings.timeout + Duration::from_secs(5);
    if tokio::time::timeout(limit, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        // Their leases run out and another worker sends them again.
        tracing::warn!(
            deliveries = in_flight.len(),
            "stopping with webhooks still in flight"
        );
        in_flight.shutdown().await;
    }
}

/// Gives up deliveries whose last attempt died with its worker, then claims as many due ones
/// as there is room for and starts them.
async fn tick(
    ctx: &Ctx,
    settings: &WebhookSettings,
    in_flight: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let given_up = webhook::give_up_abandoned(&ctx.db, settings).await?;
    if given_up > 0 {
        tracing::warn!(
            deliveries = given_up,
            "gave up webhooks whose last attempt never finished"
        );
    }
    let room = webhook::MAX_IN_FLIGHT.saturating_sub(in_flight.len());
    if room == 0 {
        return Ok(());
    }
    for claim in webhook::claim(&ctx.db, settings, room).await? {
        let (ctx, settings) = (ctx.clone(), settings.clone());
        in_flight.spawn(async move {
            deliver(&ctx, &settings, &claim).await;
        });
    }
    Ok(())
}

/// Makes the attempt `claim` holds and records it; returns the attempt's outcome (`None` when
/// nothing was sent: the batch is gone, or Postgres failed before the send).
pub async fn deliver(ctx: &Ctx, settings: &WebhookSettings, claim: &Claim) -> Option<Outcome> {
    let batch = claim.batch;
    let message = match Message::load(&ctx.db, claim).await {
        Ok(Some(message)) => message,
        Ok(None) => return None, // deleted with its delivery
        Err(e) => {
            tracing::warn!(%batch, error = %e, "cannot read a batch for its webhook; it will be tried again");
            return None;
        }
    };
    let outcome = webhook::send(settings, &claim.url, &message).await;
    jobs::metrics::WEBHOOK_ATTEMPTS
        .with_label_values(&[outcome.label()])
        .inc();
    // Only the host reaches the logs: the URL's query may hold the receiver's token.
    let host = claim.host();
    let recorded = webhook::record(&ctx.db, settings, claim, &outcome, &ctx.worker).await;
    let attempt = claim.attempt;
    match (&outcome, recorded) {
        (_, Err(e)) => tracing::warn!(
            %batch, attempt, outcome = outcome.label(), error = %e,
            "cannot record a webhook attempt; it will be tried again"
        ),
        (_, Ok(Recorded::Stale)) => tracing::warn!(
            %batch, attempt, outcome = outcome.label(),
            "a webhook attempt outlived its lease; its outcome was not recorded"
        ),
        (Outcome::Delivered { .. }, Ok(_)) => {
            tracing::info!(%batch, attempt, %host, detail = %outcome.detail(), "webhook delivered")
        }
        (_, Ok(Recorded::WillRetry(wait))) => tracing::info!(
            %batch, attempt, %host, detail = %outcome.detail(), retry_in_s = wait.as_secs(),
            "webhook failed; will retry"
        ),
        (_, Ok(_)) => tracing::warn!(
            %batch, attempt, %host, detail = %outcome.detail(),
            "webhook failed; given up"
        ),
    }
    Some(outcome)
}
