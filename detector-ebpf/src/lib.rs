#![no_std]
// Lets detector list this crate as a build-dependency, so cargo rebuilds the XDP object when
// its sources change. The program itself lives in main.rs.
