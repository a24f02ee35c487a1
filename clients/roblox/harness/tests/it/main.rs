//! Every Luau spec of the Roblox client as its own test, once against a real `hoard serve`
//! (SQLite, loopback) and once on Mock.

use hoard_roblox_harness::{Mode, run_spec};

macro_rules! specs {
    ($($name:ident),* $(,)?) => {
        mod live {
            $(#[test]
            fn $name() {
                super::run_spec(stringify!($name), super::Mode::Live).expect(stringify!($name));
            })*
        }
        mod mock {
            $(#[test]
            fn $name() {
                super::run_spec(stringify!($name), super::Mode::Mock).expect(stringify!($name));
            })*
        }
    };
}

specs!(
    join_save_leave,
    server_hop,
    crashed_server,
    receipts_exactly_once,
    trade,
    lost_answer,
    bind_to_close,
    request_budget,
    migration_race,
    load_failure_defaults,
    replication,
    messages_and_updates,
    trade_across,
    trade_across_rebase,
);
