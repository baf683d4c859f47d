//! The main job's traffic: events of the registry's demo types
//! (registrations, votes, screen views, KION watch progress) as wire lines,
//! with a daily shape, a few days of history for the anomaly detection, the
//! last minutes in detail for the drop detection, one injected drop and one
//! injected anomaly. `cmd_demo` sends it and checks what the query service
//! finds in it.
//!
//! History is thinner than the live traffic (about 3 000 events an hour per
//! DC at the daily peak, against `--rate` a second live): enough volume
//! for the noise model to tell a real change (ADR 0004), little enough to
//! ship in seconds. It is spread over every minute of its 78 hours, 4 680
//! minutes per DC, as real traffic would be: the shippers catch them up
//! many minutes per statement (ADR 0015) and build their hours and days
//! (ADR 0016).

use std::ops::Range;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Hours of history before the anomaly evaluation's end: the `daily`
/// prediction wants the same hour on at least 3 earlier days (ADR 0004)
/// for each evaluated hour.
pub(crate) const HISTORY_HOURS: u32 = 3 * 24 + ANOMALY_WINDOW_HOURS;
/// Events per hour and DC in the history at the daily peak.
const HISTORY_EVENTS_PER_HOUR: f64 = 3_000.0;
/// Minutes before the start shown minute by minute (the drop's windows
/// and the minutes before them).
pub(crate) const RECENT_MINUTES: u32 = 10;
/// Events per minute and DC in those minutes: enough that an 80 % drop of
/// one platform in three minutes stands far above the noise.
const RECENT_EVENTS_PER_MINUTE: u32 = 2_000;
/// The injected drop: iOS screen views fall by 80 % in the minutes this
/// many minutes before the start minute (now-4, now-3 and now-2).
pub(crate) const DROP_MINUTES_BACK: Range<u32> = 2..5;
const DROP_KEPT: f64 = 0.2;
/// Hours evaluated by the anomaly detection, ending where the history ends.
pub(crate) const ANOMALY_WINDOW_HOURS: u32 = 6;
/// The injected anomaly: this many hours before the history's end, in dc1,
/// a farm of `SPIKE_ACCOUNTS` accounts votes `yes` from one country, as many
/// votes as dc1 has in that hour otherwise.
pub(crate) const SPIKE_HOURS_BACK: u32 = 3;
pub(crate) const SPIKE_COUNTRY: u16 = 7;
pub(crate) const SPIKE_ACCOUNTS: u64 = 20;
/// The series the anomaly shows in, once the roll-ups are folded (the
/// vote total, `vote=yes` and `country_id=7` all carry it whole).
pub(crate) const SPIKE_SERIES: &str = "vote.count(){vote=yes,country_id=7}";

/// Users both datacenters draw from; the spike's accounts sit above them.
const USERS: u64 = 50_000;
const COUNTRIES: u16 = 60;
/// Share of each event type in the traffic: screen views dominate, as in
/// an app; registrations are the rarest.
const SHARE_SCREEN_VIEW: f64 = 0.55;
const SHARE_WATCH: f64 = 0.20;
const SHARE_VOTE: f64 = 0.17;

/// The moments the traffic is laid out around, all unix seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// The minute the demo started sending in.
    pub(crate) start_s: u32,
    /// First minute shown minute by minute.
    pub(crate) recent_from_s: u32,
    /// End of the history (an hour start at or before `recent_from_s`) and
    /// of the anomaly evaluation.
    pub(crate) history_to_s: u32,
    pub(crate) history_from_s: u32,
    /// The hour of the injected anomaly.
    pub(crate) spike_hour_s: u32,
    /// The injected drop's minutes, `[from, to)`.
    pub(crate) drop_from_s: u32,
    pub(crate) drop_to_s: u32,
}

impl Plan {
    pub(crate) fn new(now_s: u32) -> Self {
        let start_s = now_s - now_s % 60;
        let recent_from_s = start_s - RECENT_MINUTES * 60;
        let history_to_s = recent_from_s - recent_from_s % 3600;
        Self {
            start_s,
            recent_from_s,
            history_to_s,
            history_from_s: history_to_s - HISTORY_HOURS * 3600,
            spike_hour_s: history_to_s - SPIKE_HOURS_BACK * 3600,
            drop_from_s: start_s - (DROP_MINUTES_BACK.end - 1) * 60,
            drop_to_s: start_s - (DROP_MINUTES_BACK.start - 1) * 60,
        }
    }
}

/// Traffic level at `t_s` relative to the daily peak: lowest at 04:00 UTC
/// (0.3), highest at 16:00 UTC (1.0), a cosine between.
pub(crate) fn daily_shape(t_s: u32) -> f64 {
    let hour = f64::from(t_s % 86_400) / 3600.0;
    0.3 + 0.7 * (1.0 - (std::f64::consts::TAU * (hour - 4.0) / 24.0).cos()) / 2.0
}

/// Draws events of the demo's mix.
pub(crate) struct Mix {
    rng: StdRng,
    /// Cumulative weights of countries 1..=COUNTRIES (Zipf: a few big ones,
    /// a long tail of small ones).
    countries: Vec<f64>,
}

impl Mix {
    pub(crate) fn new(seed: u64) -> Self {
        let mut total = 0.0;
        let countries = (1..=COUNTRIES)
            .map(|c| {
                total += 1.0 / f64::from(c);
                total
            })
            .collect();
        Self {
            rng: StdRng::seed_from_u64(seed),
            countries,
        }
    }

    fn country(&mut self) -> u16 {
        let total = *self.countries.last().expect("countries");
        let x = self.rng.random_range(0.0..total);
        self.countries.partition_point(|&c| c <= x) as u16 + 1
    }

    /// One event at `time_ms`, its type drawn from the mix; an iOS screen
    /// view is kept with probability `ios_kept` (None when left out).
    pub(crate) fn event(&mut self, time_ms: u64, ios_kept: f64) -> Option<String> {
        let user = self.rng.random_range(1..=USERS);
        let kind = self.rng.random_range(0.0..1.0);
        let line = if kind < SHARE_SCREEN_VIEW {
            let platform = ["web", "ios", "android"][self.rng.random_range(0..3)];
            if platform == "ios" && !self.rng.random_bool(ios_kept) {
                return None;
            }
            let screen =
                ["home", "search", "profile", "chat", "settings"][self.rng.random_range(0..5)];
            // Load times are skewed: most fast, a tail of slow ones.
            let load_ms = 20 + (self.rng.random_range(0.0f64..1.0).powi(3) * 3_000.0) as u32;
            serde_json::json!({"event": "screen_view", "time": time_ms, "attrs": {
                "user_id": user, "screen": screen, "platform": platform, "load_ms": load_ms}})
        } else if kind < SHARE_SCREEN_VIEW + SHARE_WATCH {
            // A user's place in a video moves with the clock, so the newest
            // report of a (user, video) is also the furthest (until it wraps).
            let video = self.rng.random_range(1..=500u64);
            let video_time = (time_ms / 1000 + user * 31 + video * 17) % 7_200;
            serde_json::json!({"event": "watch_progress", "time": time_ms, "attrs": {
                "user_id": user, "video_id": video, "video_time": video_time}})
        } else if kind < SHARE_SCREEN_VIEW + SHARE_WATCH + SHARE_VOTE {
            serde_json::json!({"event": "vote", "time": time_ms, "attrs": {
                "user_id": user, "target_user_id": self.rng.random_range(1..=USERS),
                "vote": if self.rng.random_bool(0.6) { "yes" } else { "no" },
                "country_id": self.country()}})
        } else {
            let gender = match self.rng.random_range(0..100) {
                0..48 => "male",
                48..96 => "female",
                _ => "unknown",
            };
            let platform = ["web", "ios", "android"][self.rng.random_range(0..3)];
            serde_json::json!({"event": "registration", "time": time_ms, "attrs": {
                "user_id": user, "gender": gender, "country_id": self.country(),
                "platform": platform}})
        };
        Some(line.to_string())
    }

    /// A `yes` vote from one of the farm's accounts in `SPIKE_COUNTRY`.
    fn farm_vote(&mut self, time_ms: u64) -> String {
        serde_json::json!({"event": "vote", "time": time_ms, "attrs": {
            "user_id": USERS + self.rng.random_range(1..=SPIKE_ACCOUNTS),
            "target_user_id": self.rng.random_range(1..=USERS),
            "vote": "yes", "country_id": SPIKE_COUNTRY}})
        .to_string()
    }

    fn time_in_minute(&mut self, minute_s: u32) -> u64 {
        u64::from(minute_s) * 1000 + self.rng.random_range(0..60_000)
    }
}

/// Everything before the live traffic for datacenter number `dc_index`
/// (0 is dc1, which alone gets the injected anomaly): the history hour by
/// hour, then the recent minutes with the injected drop, oldest first.
pub(crate) fn backfill(plan: &Plan, dc_index: usize) -> Vec<String> {
    let mut mix = Mix::new(0x5eed + dc_index as u64);
    let mut out = Vec::new();
    for minute in 0..HISTORY_HOURS * 60 {
        let minute_s = plan.history_from_s + minute * 60;
        // The minute's share of its hour, its fraction rounded at random
        // so the hour's total keeps the curve.
        let exact = HISTORY_EVENTS_PER_HOUR / 60.0 * daily_shape(minute_s);
        let n = exact as u32 + u32::from(mix.rng.random_bool(exact.fract()));
        for _ in 0..n {
            let t = mix.time_in_minute(minute_s);
            out.extend(mix.event(t, 1.0));
        }
        if dc_index == 0 && minute_s - minute_s % 3600 == plan.spike_hour_s {
            for _ in 0..(exact * SHARE_VOTE).round() as u32 {
                let t = mix.time_in_minute(minute_s);
                out.push(mix.farm_vote(t));
            }
        }
    }
    for m in 0..RECENT_MINUTES {
        let minute_s = plan.recent_from_s + m * 60;
        let kept = if (plan.drop_from_s..plan.drop_to_s).contains(&minute_s) {
            DROP_KEPT
        } else {
            1.0
        };
        for _ in 0..RECENT_EVENTS_PER_MINUTE {
            let t = mix.time_in_minute(minute_s);
            out.extend(mix.event(t, kept));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(lines: &[String]) -> Vec<serde_json::Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn the_plan_keeps_history_drop_and_spike_apart() {
        // 02:05:30 UTC: the recent minutes reach back into the hour before.
        let p = Plan::new(1_764_036_000 + 2 * 3600 + 5 * 60 + 30);
        assert!(p.start_s.is_multiple_of(60));
        assert!(p.history_to_s <= p.recent_from_s && p.history_to_s.is_multiple_of(3600));
        assert_eq!(p.history_to_s - p.history_from_s, HISTORY_HOURS * 3600);
        assert!(
            p.recent_from_s <= p.drop_from_s - 3 * 60,
            "a reference window before the drop"
        );
        assert_eq!(p.drop_to_s - p.drop_from_s, 3 * 60);
        assert!(p.drop_to_s < p.start_s);
        let evaluated = p.history_to_s - ANOMALY_WINDOW_HOURS * 3600..p.history_to_s;
        assert!(evaluated.contains(&p.spike_hour_s));
        // The daily prediction's three earlier days of the first evaluated hour.
        assert!(evaluated.start - 3 * 86_400 >= p.history_from_s);
    }

    #[test]
    fn the_daily_shape_has_a_night_and_a_day() {
        let at = |h: u32| daily_shape(h * 3600);
        assert!((at(4) - 0.3).abs() < 1e-9);
        assert!((at(16) - 1.0).abs() < 1e-9);
        assert!(at(10) > at(4) && at(10) < at(16));
    }

    #[test]
    fn the_backfill_carries_the_drop_and_the_spike() {
        let p = Plan::new(1_764_036_000 + 15 * 3600 + 20 * 60);
        let dc1 = parsed(&backfill(&p, 0));
        let dc2 = parsed(&backfill(&p, 1));
        let in_range = |v: &serde_json::Value, from: u32, to: u32| {
            let t = v["time"].as_u64().unwrap() / 1000;
            (u64::from(from)..u64::from(to)).contains(&t)
        };
        let ios =
            |v: &serde_json::Value| v["event"] == "screen_view" && v["attrs"]["platform"] == "ios";
        let count =
            |evs: &[serde_json::Value], from, to, f: &dyn Fn(&serde_json::Value) -> bool| {
                evs.iter().filter(|v| in_range(v, from, to) && f(v)).count()
            };
        let dropped = count(&dc1, p.drop_from_s, p.drop_to_s, &ios);
        let before = count(&dc1, p.drop_from_s - 180, p.drop_from_s, &ios);
        assert!(
            dropped * 3 < before,
            "{dropped} iOS views in the drop, {before} before"
        );

        let farm = |v: &serde_json::Value| {
            v["event"] == "vote"
                && v["attrs"]["country_id"] == SPIKE_COUNTRY
                && v["attrs"]["user_id"].as_u64().unwrap() > USERS
        };
        let hour = p.spike_hour_s;
        assert!(count(&dc1, hour, hour + 3600, &farm) > 100);
        assert_eq!(
            count(&dc1, 0, hour, &farm) + count(&dc1, hour + 3600, u32::MAX, &farm),
            0
        );
        assert_eq!(count(&dc2, 0, u32::MAX, &farm), 0);

        // Every event is valid wire form, and none is in the future.
        assert!(dc2
            .iter()
            .all(|v| v["time"].as_u64().unwrap() / 1000 < u64::from(p.start_s)));
        assert!(dc2.iter().any(|v| v["event"] == "watch_progress"));
        assert!(dc2.iter().any(|v| v["event"] == "registration"));
    }
}
