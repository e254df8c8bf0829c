//! `audio_file.lease_token` and `audio_file.retry_at`: what several replicas sharing one
//! database need to hand work around safely.
//!
//! - `lease_token`: a fresh UUID at every claim. Every write a worker makes while it holds a
//!   file names it, so a worker whose lease ran out (and whose file another replica claimed)
//!   cannot overwrite anything.
//! - `retry_at`: a file whose last attempt failed for a passing reason (a connection, a full
//!   queue) is not claimed again before this time (back-off).

use sea_orm_migration::{prelude::*, schema::*};

use crate::AudioFile;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The columns this migration adds to `audio_file`.
#[derive(DeriveIden, Clone, Copy)]
pub enum LeaseColumns {
    LeaseToken,
    RetryAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(AudioFile::Table)
                    .add_column(uuid_null(LeaseColumns::LeaseToken))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(AudioFile::Table)
                    .add_column(timestamp_with_time_zone_null(LeaseColumns::RetryAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [LeaseColumns::RetryAt, LeaseColumns::LeaseToken] {
            manager
                .alter_table(
                    Table::alter()
                        .table(AudioFile::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
