//! The ledger scripts against a real Redis.

use super::*;

fn admit(lease: &Lease, now_ms: i64) -> Admit {
    limited(lease, now_ms, Limits::default())
}

fn limited(lease: &Lease, now_ms: i64, limits: Limits) -> Admit {
    Admit {
        now_ms,
        lease: lease.clone(),
        limits,
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
    let budget = |lease| {
        limited(
            lease,
            0,
            Limits {
                total_cost: Some(10),
                ..Limits::default()
            },
        )
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
    let one_at_a_time = |lease, now| {
        limited(
            lease,
            now,
            Limits {
                concurrency: Some(1),
                ..Limits::default()
            },
        )
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
        .renew(std::slice::from_ref(&held), &[], 20_000)
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
    let daily = |lease, now, start| {
        limited(
            lease,
            now,
            Limits {
                periods: vec![PeriodLimit {
                    name: "day".to_owned(),
                    start_ms: start,
                    limit: 10,
                    family: None,
                }],
                ..Limits::default()
            },
        )
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
    let windowed = |lease, now| {
        limited(
            lease,
            now,
            Limits {
                window: Some(Window {
                    window_ms: 10_000,
                    bucket_ms: 1_000,
                    requests: Some(2),
                    tokens: None,
                    cost: None,
                }),
                ..Limits::default()
            },
        )
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
    let lifetime = limited(
        &third,
        2_000,
        Limits {
            lifetime_ms: Some(1_000),
            ..Limits::default()
        },
    );
    assert_eq!(
        redis.admit(&lifetime).await.unwrap(),
        Admitted::No(Refused::Expired),
        "first used at 1 ms, seeded"
    );
}

/// The channels' notices, once subscribed; the watcher ends when the receiver is dropped.
async fn watching(
    redis: &Redis,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<Notice>,
) {
    let (sender, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let redis = redis.clone();
    #[allow(clippy::disallowed_methods)] // joined by the test
    let watcher = tokio::spawn(async move { redis.watch(sender).await });
    assert_eq!(notices.recv().await, Some(Notice::Subscribed));
    (watcher, notices)
}

#[tokio::test]
async fn account_marks_are_kept_at_their_maximum_announced_and_dropped_after_a_reset() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    let (watcher, mut notices) = watching(&redis).await;
    // Now: marks expire a minute after their last cooldown.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let cooled = Mark {
        at_ms: now,
        reason: "rate_limited: 429",
        cool_until_ms: Some(now + 60_000),
        family_cool_until_ms: Some(("opus", now + 120_000)),
        ..Mark::default()
    };
    redis.mark("a1", &cooled).await.unwrap();
    let earlier = Mark {
        at_ms: now + 1,
        reason: "rate_limited: again",
        cool_until_ms: Some(now + 30_000),
        ..Mark::default()
    };
    redis.mark("a1", &earlier).await.unwrap();
    for _ in 0..2 {
        assert_eq!(notices.recv().await, Some(Notice::Account("a1".into())));
    }
    let day = now / 86_400_000;
    let states = redis.account_states(&["a1", "a2"], day).await.unwrap();
    assert_eq!(
        states[0].cool_until_ms,
        now + 60_000,
        "the later cooldown stays"
    );
    assert_eq!(
        states[0].family_cool_until_ms,
        [("opus".to_owned(), now + 120_000)]
    );
    assert_eq!(states[0].marked_at_ms, now + 1);
    assert_eq!(states[0].reason.as_deref(), Some("rate_limited: again"));
    assert_eq!(states[1], AccountState::default());

    // A mark made after an operator reset replaces everything from before it.
    let blocked = Mark {
        at_ms: now + 10,
        reset_seen_ms: now + 5,
        reason: "blocked: organization disabled",
        blocked: true,
        ..Mark::default()
    };
    redis.mark("a1", &blocked).await.unwrap();
    let state = &redis.account_states(&["a1"], day).await.unwrap()[0];
    assert!(state.blocked);
    assert_eq!(
        (state.cool_until_ms, state.family_cool_until_ms.len()),
        (0, 0)
    );

    // A day's cost adds up; crossing the limit is announced once.
    notices.recv().await;
    redis.seed_day_cost("a2", day, 50).await.unwrap();
    redis.seed_day_cost("a2", day, 999).await.unwrap();
    let day_cost = |cost| Write::DayCost {
        account_id: "a2".into(),
        day,
        cost,
        limit: Some(100),
    };
    // One batch's costs of an account go as one sum.
    let totals = redis
        .write(&[day_cost(30), day_cost(30), day_cost(30)])
        .await
        .unwrap();
    assert_eq!(totals, [140]);
    assert_eq!(notices.recv().await, Some(Notice::Account("a2".into())));
    assert_eq!(
        redis.account_states(&["a2"], day).await.unwrap()[0].day_cost,
        140
    );
    drop(notices);
    watcher.await.unwrap();
}

#[tokio::test]
async fn account_places_are_leases_and_locks_and_bindings_are_shared() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    let slot = |member: &str| Slot {
        account_id: "acct".into(),
        member: member.into(),
    };
    assert!(redis.take_slot(&slot("a"), 2, 0).await.unwrap());
    assert!(redis.take_slot(&slot("b"), 2, 0).await.unwrap());
    assert!(!redis.take_slot(&slot("c"), 2, 0).await.unwrap());
    redis.write(&[Write::Release(slot("a"))]).await.unwrap();
    assert!(redis.take_slot(&slot("c"), 2, 1).await.unwrap());
    // "b" renewed at 20 s lives to 50 s; "c", never renewed, is gone after 30 s.
    redis.renew(&[], &[slot("b")], 20_000).await.unwrap();
    assert!(redis.take_slot(&slot("d"), 2, 31_000).await.unwrap());
    assert!(!redis.take_slot(&slot("e"), 2, 31_000).await.unwrap());

    let ttl = Duration::from_secs(5);
    assert!(redis.try_lock("refresh:acct", "one", ttl).await.unwrap());
    assert!(!redis.try_lock("refresh:acct", "two", ttl).await.unwrap());
    redis.unlock("refresh:acct", "two").await.unwrap();
    assert!(
        !redis.try_lock("refresh:acct", "two", ttl).await.unwrap(),
        "only its holder unlocks it"
    );
    redis.unlock("refresh:acct", "one").await.unwrap();
    assert!(redis.try_lock("refresh:acct", "two", ttl).await.unwrap());

    assert_eq!(redis.bound_account("s1", 1_000).await.unwrap(), None);
    redis
        .write(&[Write::Bind {
            session: "s1".into(),
            account_id: "acct".into(),
            ttl_ms: 200,
        }])
        .await
        .unwrap();
    assert_eq!(
        redis.bound_account("s1", 200).await.unwrap().as_deref(),
        Some("acct")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        redis.bound_account("s1", 200).await.unwrap(),
        None,
        "bindings expire"
    );
}

#[tokio::test]
async fn failures_from_an_address_block_it_everywhere_once_they_reach_the_count() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    let (watcher, mut notices) = watching(&redis).await;
    let failure = |address: &str| Write::Failure {
        address: address.into(),
        now_ms: 1_000,
        window_ms: 60_000,
        max: 3,
        block_ms: 60_000,
    };
    redis
        .write(&[
            failure("192.0.2.1"),
            failure("192.0.2.2"),
            failure("192.0.2.1"),
        ])
        .await
        .unwrap();
    redis.write(&[failure("192.0.2.1")]).await.unwrap();
    assert_eq!(
        notices.recv().await,
        Some(Notice::Blocked {
            address: "192.0.2.1".into(),
            until_ms: 61_000
        })
    );
    // Blocked: further failures count nothing and announce nothing.
    redis
        .write(&[
            failure("192.0.2.1"),
            failure("192.0.2.1"),
            failure("192.0.2.1"),
        ])
        .await
        .unwrap();
    redis
        .mark(
            "acct",
            &Mark {
                at_ms: 5,
                reason: "r",
                ..Mark::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(notices.recv().await, Some(Notice::Account("acct".into())));
    drop(notices);
    watcher.await.unwrap();
}

#[tokio::test]
async fn finishes_of_one_key_in_one_batch_count_as_they_would_one_by_one() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    let mut views = Vec::new();
    for (key, batched) in [("one-by-one", false), ("batched", true)] {
        redis.seed(key, &Seed::default()).await.unwrap();
        let leases: Vec<Lease> = (0..4)
            .map(|n| Lease::new(key, &format!("l{n}"), 100, 10, None))
            .collect();
        for lease in &leases {
            assert_eq!(
                redis.admit(&admit(lease, 1_000)).await.unwrap(),
                Admitted::Yes
            );
        }
        let finishes: Vec<Finish> = leases
            .iter()
            .enumerate()
            .map(|(n, lease)| Finish {
                settled: (n != 2).then_some((30 + n as i64, 5)),
                window: Some((60_000, 1_000)),
                ..settled(lease, 2_000, 0)
            })
            .collect();
        if batched {
            redis.finish(&finishes).await.unwrap();
        } else {
            for finish in &finishes {
                redis.finish(std::slice::from_ref(finish)).await.unwrap();
            }
        }
        let periods = [("day".to_owned(), 0)];
        views.push(
            redis
                .ledger_view(key, 2_000, &periods, Some(60_000))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(views[0], views[1]);
    assert_eq!(views[0].in_flight, 0);
    assert_eq!(views[0].total_cost, 30 + 31 + 33);
    assert_eq!(views[0].periods, [30 + 31 + 33]);
    assert_eq!(
        views[0].window,
        Some((0, 15, 94)),
        "admitted without a window: no requests"
    );
}

#[tokio::test]
async fn admissions_of_several_keys_in_one_batch_answer_as_they_would_one_by_one() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    // Per key, in order: a budget of 250 for 100 each, a concurrency of 2, a window of two
    // requests; and a key never seeded.
    let requests = |suffix: &str| -> Vec<Admit> {
        (0..4)
            .flat_map(|n| {
                let lease = |key: &str| {
                    Lease::new(&format!("{key}-{suffix}"), &format!("{n}"), 100, 10, None)
                };
                [
                    limited(
                        &lease("budget"),
                        1_000,
                        Limits {
                            total_cost: Some(250),
                            ..Limits::default()
                        },
                    ),
                    limited(
                        &lease("concurrency"),
                        1_000,
                        Limits {
                            concurrency: Some(2),
                            ..Limits::default()
                        },
                    ),
                    limited(
                        &lease("window"),
                        1_000 + n,
                        Limits {
                            window: Some(Window {
                                window_ms: 60_000,
                                bucket_ms: 1_000,
                                requests: Some(2),
                                tokens: None,
                                cost: None,
                            }),
                            ..Limits::default()
                        },
                    ),
                    admit(&lease("unseeded"), 1_000),
                ]
            })
            .collect()
    };
    let mut answers = Vec::new();
    for (suffix, batched) in [("single", false), ("batched", true)] {
        for key in ["budget", "concurrency", "window"] {
            redis
                .seed(&format!("{key}-{suffix}"), &Seed::default())
                .await
                .unwrap();
        }
        let admits = requests(suffix);
        answers.push(if batched {
            redis.admit_many(&admits).await.unwrap()
        } else {
            let mut one_by_one = Vec::new();
            for admit in &admits {
                one_by_one.push(redis.admit(admit).await.unwrap());
            }
            one_by_one
        });
    }
    assert_eq!(answers[0], answers[1]);
    let of =
        |key: usize| -> Vec<Admitted> { answers[1].iter().skip(key).step_by(4).copied().collect() };
    let yes_no = |refused| {
        [
            Admitted::Yes,
            Admitted::Yes,
            Admitted::No(refused),
            Admitted::No(refused),
        ]
    };
    assert_eq!(of(0), yes_no(Refused::TotalCost));
    assert_eq!(of(1), yes_no(Refused::Concurrency));
    assert!(matches!(
        of(2)[..],
        [
            Admitted::Yes,
            Admitted::Yes,
            Admitted::No(Refused::RateRequests { .. }),
            _
        ]
    ));
    assert_eq!(of(3), [Admitted::Unseeded; 4]);
    let view = redis
        .ledger_view("budget-batched", 1_000, &[], None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((view.in_flight, view.reserved_cost), (2, 200));
}

#[tokio::test]
async fn a_batch_whose_limits_change_midway_still_admits_only_what_fits() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    redis.seed("daily", &Seed::default()).await.unwrap();
    let daily = PeriodLimit {
        name: "day".to_owned(),
        start_ms: 0,
        limit: 250,
        family: None,
    };
    // Two groups for one key (the policy gained a total budget mid-batch): 100 each, 250 a day.
    let admits: Vec<Admit> = (0..4)
        .map(|n| {
            limited(
                &Lease::new("daily", &format!("{n}"), 100, 10, None),
                1_000,
                Limits {
                    total_cost: (n % 2 == 0).then_some(1_000_000),
                    periods: vec![daily.clone()],
                    ..Limits::default()
                },
            )
        })
        .collect();
    let answers = redis.admit_many(&admits).await.unwrap();
    assert_eq!(
        answers
            .iter()
            .filter(|answer| **answer == Admitted::Yes)
            .count(),
        2
    );
    assert!(answers
        .iter()
        .all(|answer| matches!(answer, Admitted::Yes | Admitted::No(Refused::Period(0)))));
}

fn allot(held: Option<&Lease>, id: &str, in_flight: Amounts, spare: Amounts) -> Allot {
    Allot {
        now_ms: 0,
        key_id: "k".to_owned(),
        held: held.cloned(),
        id: id.to_owned(),
        family: None,
        in_flight,
        carry: Amounts::default(),
        spare,
        settled: (0, 0),
        periods: vec![("day".to_owned(), 0)],
        limits: Limits {
            concurrency: Some(1_000),
            total_cost: Some(10_000),
            ..Limits::default()
        },
    }
}

fn amounts(slots: u32, cost: i64) -> Amounts {
    Amounts {
        slots,
        cost,
        tokens: 0,
    }
}

async fn allotted_lease(redis: &Redis, call: Allot) -> (Option<Lease>, bool) {
    match redis.allot(&[call]).await.unwrap().pop().unwrap() {
        Allotted::Taken { lease, spare } => (lease, spare),
        Allotted::Unseeded => panic!("the ledger was seeded"),
    }
}

#[tokio::test]
async fn an_allotment_takes_a_spare_only_where_many_times_it_fits_and_settles_what_was_used() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    let first = allot(None, "a1", Amounts::default(), amounts(10, 100));
    assert_eq!(
        redis.allot(std::slice::from_ref(&first)).await.unwrap(),
        vec![Allotted::Unseeded]
    );
    redis.seed("k", &Seed::default()).await.unwrap();
    // 8 × 100 fits in 10,000: the spare is reserved.
    let (lease, spare) = allotted_lease(&redis, first).await;
    assert!(spare);
    let lease = lease.unwrap();
    let day = [("day".to_owned(), 0)];
    let view = |now| redis.ledger_view("k", now, &day, None);
    let seen = view(0).await.unwrap().unwrap();
    assert_eq!(
        (seen.in_flight, seen.reserved_cost),
        (0, 0),
        "a spare is not reported as in flight"
    );
    assert!(redis.spare_held("k").await.unwrap());
    // A request elsewhere sees the spare reserved: 10,000 - 100 left.
    let big = Lease::new("k", "big", 9_901, 0, None);
    let budget = Limits {
        total_cost: Some(10_000),
        ..Limits::default()
    };
    assert_eq!(
        redis
            .admit(&limited(&big, 0, budget.clone()))
            .await
            .unwrap(),
        Admitted::No(Refused::TotalCost)
    );
    // Three requests under the allotment: two in flight (cost 20), one settled for 7.
    // It carries 50 of its spare on (kept whatever the limits say), and asks for more.
    let mut next = allot(Some(&lease), "a2", amounts(2, 20), amounts(10, 1_300));
    next.settled = (7, 3);
    next.carry = amounts(1, 50);
    let (lease, spare) = allotted_lease(&redis, next).await;
    assert!(!spare, "8 × 1,300 does not fit in what is left");
    let lease = lease.unwrap();
    let seen = view(0).await.unwrap().unwrap();
    assert_eq!(
        (
            seen.in_flight,
            seen.reserved_cost,
            seen.total_cost,
            seen.total_tokens
        ),
        (2, 20, 7, 3)
    );
    assert_eq!(seen.periods, vec![7]);
    assert!(
        redis.spare_held("k").await.unwrap(),
        "the carry is a spare: a refusal elsewhere waits for it"
    );
    let almost = Lease::new("k", "almost", 10_000 - 7 - 20 - 50, 0, None);
    assert_eq!(
        redis
            .admit(&limited(&almost, 0, budget.clone()))
            .await
            .unwrap(),
        Admitted::Yes,
        "exactly what the lease does not hold is left"
    );
    redis
        .finish(&[Finish {
            settled: None,
            ..settled(&almost, 0, 0)
        }])
        .await
        .unwrap();
    // Nothing in flight, nothing spare: the allotment ends and holds nothing.
    let (lease, spare) = allotted_lease(
        &redis,
        allot(Some(&lease), "a3", Amounts::default(), Amounts::default()),
    )
    .await;
    assert_eq!((lease, spare), (None, false));
    assert!(!redis.spare_held("k").await.unwrap());
    let seen = view(0).await.unwrap().unwrap();
    assert_eq!(
        (seen.in_flight, seen.reserved_cost, seen.total_cost),
        (0, 0, 7)
    );
    let rest = Lease::new("k", "rest", 10_000 - 7, 0, None);
    assert_eq!(
        redis.admit(&limited(&rest, 0, budget)).await.unwrap(),
        Admitted::Yes
    );
}

#[tokio::test]
async fn an_allotment_not_renewed_gives_its_places_and_spare_back_after_its_ttl() {
    let Some((redis, _)) = testing::redis().await else {
        return;
    };
    redis.seed("k", &Seed::default()).await.unwrap();
    let mut call = allot(None, "a1", amounts(3, 30), amounts(5, 50));
    call.limits.concurrency = Some(200);
    let (lease, spare) = allotted_lease(&redis, call).await;
    assert!(spare);
    let lease = lease.unwrap();
    let one_more = |now| {
        limited(
            &Lease::new("k", "other", 1, 0, None),
            now,
            Limits {
                concurrency: Some(8),
                ..Limits::default()
            },
        )
    };
    // The allotment holds 8 places.
    assert_eq!(
        redis.admit(&one_more(1_000)).await.unwrap(),
        Admitted::No(Refused::Concurrency)
    );
    // Renewed like any lease; once it lapses everything it held comes back, once.
    redis
        .renew(std::slice::from_ref(&lease), &[], 20_000)
        .await
        .unwrap();
    assert_eq!(
        redis.admit(&one_more(40_000)).await.unwrap(),
        Admitted::No(Refused::Concurrency)
    );
    assert_eq!(redis.admit(&one_more(51_000)).await.unwrap(), Admitted::Yes);
    assert!(!redis.spare_held("k").await.unwrap());
    // Its holder, not knowing, takes the next lease: the lapsed one is not given back again.
    let mut late = allot(Some(&lease), "a2", Amounts::default(), Amounts::default());
    late.now_ms = 52_000;
    allotted_lease(&redis, late).await;
    let seen = redis
        .ledger_view("k", 52_000, &[], None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seen.in_flight, seen.reserved_cost), (1, 1));
}
