//! The ledger scripts against a real Redis.

use super::*;

fn admit<'a>(lease: &'a Lease, now_ms: i64) -> Admit<'a> {
    Admit {
        now_ms,
        lease,
        concurrency: None,
        token_quota: None,
        total_cost: None,
        lifetime_ms: None,
        periods: Vec::new(),
        window: None,
    }
}

fn settled(lease: &Lease, now_ms: i64, cost: i64) -> Finish {
    Finish {
        lease: lease.clone(),
        now_ms,
        settled: Some((cost, 10)),
        window: None,
        periods: vec![("day".to_owned(), 0)],
    }
}

#[tokio::test]
async fn a_budget_admits_what_fits_and_settling_returns_the_rest() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    let first = Lease::new("k", "a", 4, 10, None);
    assert_eq!(
        redis.admit(&admit(&first, 0)).await.unwrap(),
        Admitted::Unseeded
    );
    redis.seed("k", &Seed::default()).await.unwrap();
    let budget = |lease| Admit {
        total_cost: Some(10),
        ..admit(lease, 0)
    };
    let leases: Vec<Lease> = (0..3)
        .map(|n| Lease::new("k", &n.to_string(), 4, 10, None))
        .collect();
    assert_eq!(
        redis.admit(&budget(&leases[0])).await.unwrap(),
        Admitted::Yes
    );
    assert_eq!(
        redis.admit(&budget(&leases[1])).await.unwrap(),
        Admitted::Yes
    );
    assert_eq!(
        redis.admit(&budget(&leases[2])).await.unwrap(),
        Admitted::No(Refused::TotalCost)
    );
    // One settles for less than it reserved, one gives its reservation back: 1 + 4 used.
    redis
        .finish(&[
            settled(&leases[0], 1, 1),
            Finish {
                settled: None,
                ..settled(&leases[1], 1, 0)
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        redis.admit(&budget(&leases[2])).await.unwrap(),
        Admitted::Yes
    );
    let fourth = Lease::new("k", "3", 4, 10, None);
    assert_eq!(redis.admit(&budget(&fourth)).await.unwrap(), Admitted::Yes);
    let fifth = Lease::new("k", "4", 4, 10, None);
    assert_eq!(
        redis.admit(&budget(&fifth)).await.unwrap(),
        Admitted::No(Refused::TotalCost)
    );
    // Finishing twice changes nothing the second time.
    redis.finish(&[settled(&leases[0], 1, 1)]).await.unwrap();
    assert_eq!(
        redis.admit(&budget(&fifth)).await.unwrap(),
        Admitted::No(Refused::TotalCost),
        "a finished lease is not given back twice (its cost was counted once more, though)"
    );
}

#[tokio::test]
async fn a_lease_not_renewed_gives_its_slot_back_after_its_ttl() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    redis.seed("k", &Seed::default()).await.unwrap();
    let one_at_a_time = |lease, now| Admit {
        concurrency: Some(1),
        ..admit(lease, now)
    };
    let held = Lease::new("k", "held", 1, 1, None);
    let waiting = Lease::new("k", "waiting", 1, 1, None);
    assert_eq!(
        redis.admit(&one_at_a_time(&held, 0)).await.unwrap(),
        Admitted::Yes
    );
    assert_eq!(
        redis.admit(&one_at_a_time(&waiting, 1_000)).await.unwrap(),
        Admitted::No(Refused::Concurrency)
    );
    // Renewed at 20 s: still held at 40 s, gone at 51 s.
    redis
        .renew(std::slice::from_ref(&held), 20_000)
        .await
        .unwrap();
    assert_eq!(
        redis.admit(&one_at_a_time(&waiting, 40_000)).await.unwrap(),
        Admitted::No(Refused::Concurrency)
    );
    assert_eq!(
        redis.admit(&one_at_a_time(&waiting, 51_000)).await.unwrap(),
        Admitted::Yes
    );
}

#[tokio::test]
async fn periods_windows_and_seeds_count_like_the_local_ledger() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    redis
        .seed(
            "k",
            &Seed {
                total_cost: 100,
                total_tokens: 5,
                first_used_ms: Some(1),
                periods: vec![("day".to_owned(), 0, 7)],
                buckets: vec![(2_000, 1, 0, 0)],
            },
        )
        .await
        .unwrap();
    let daily = |lease, now, start| Admit {
        periods: vec![PeriodLimit {
            name: "day".to_owned(),
            start_ms: start,
            limit: 10,
            family: None,
        }],
        ..admit(lease, now)
    };
    let lease = Lease::new("k", "a", 4, 1, None);
    assert_eq!(
        redis.admit(&daily(&lease, 10, 0)).await.unwrap(),
        Admitted::No(Refused::Period(0)),
        "7 seeded + 4 > 10"
    );
    assert_eq!(
        redis.admit(&daily(&lease, 10, 5)).await.unwrap(),
        Admitted::Yes,
        "a new day starts from zero"
    );
    let windowed = |lease, now| Admit {
        window: Some(Window {
            window_ms: 10_000,
            bucket_ms: 1_000,
            requests: Some(2),
            tokens: None,
            cost: None,
        }),
        ..admit(lease, now)
    };
    let second = Lease::new("k", "b", 1, 1, None);
    let third = Lease::new("k", "c", 1, 1, None);
    assert_eq!(
        redis.admit(&windowed(&second, 1_500)).await.unwrap(),
        Admitted::Yes
    );
    assert_eq!(
        redis.admit(&windowed(&third, 1_600)).await.unwrap(),
        Admitted::No(Refused::RateRequests {
            retry_after_ms: 2_000 + 10_000 - 1_600
        }),
        "the seeded request and this one fill the window"
    );
    assert_eq!(
        redis.admit(&windowed(&third, 12_000)).await.unwrap(),
        Admitted::Yes
    );
    // A second seed does not overwrite what is there.
    redis.seed("k", &Seed::default()).await.unwrap();
    let lifetime = Admit {
        lifetime_ms: Some(1_000),
        ..admit(&third, 2_000)
    };
    assert_eq!(
        redis.admit(&lifetime).await.unwrap(),
        Admitted::No(Refused::Expired),
        "first used at 1 ms, seeded"
    );
}
