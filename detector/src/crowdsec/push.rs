//! Alerts to the Local API (`[crowdsec] push = true`): detector's own bans, so CrowdSec users
//! see them in `cscli alerts list`.
