// A database whose store feature is not enabled: the error names the feature.
async fn build(pool: outbox::sqlx::AnyPool) {
    let _ = outbox::Outbox::builder(pool).build().await;
}

fn main() {
    let _ = build;
}
