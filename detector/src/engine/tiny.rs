//! [`Tiny`]: the engine's short list, 10 bytes inline.
//!
//! A state record holds several lists (failed logins, aborted transactions, evidence) that are
//! empty or a few entries long and change rarely. A `Vec` is 24 bytes inline and keeps spare
//! room; a boxed slice is 16 (pointer and a `usize` length). Every list of the engine is
//! capped far below 65,536 entries, so `Tiny` keeps the pointer and a `u16` length, packed
//! to 2-byte alignment: 10 bytes, which lets a per-address record shrink by 16 bytes (three
//! lists) at a million addresses. The heap part is exactly the entries (a push reallocates:
//! the lists are short). An empty list allocates nothing.
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A list of at most [`Tiny::MAX`] entries stored as a packed pointer and length; the
/// entries are a boxed slice of exactly their number.
#[repr(C, packed(2))]
pub struct Tiny<T> {
    /// From `Box::<[T]>::into_raw` (dangling when empty, as a boxed empty slice is).
    ptr: NonNull<T>,
    len: u16,
    /// Owns `T`s (for drop check and auto traits).
    _owns: PhantomData<Box<[T]>>,
}

// SAFETY: a `Tiny<T>` owns its entries exactly as the `Box<[T]>` it was made from does.
unsafe impl<T: Send> Send for Tiny<T> {}
// SAFETY: as above; shared access only hands out `&[T]`.
unsafe impl<T: Sync> Sync for Tiny<T> {}

impl<T> Tiny<T> {
    /// Most entries a list holds; making one from more keeps the newest (the last) ones.
    pub const MAX: usize = u16::MAX as usize;

    fn from_box(b: Box<[T]>) -> Tiny<T> {
        debug_assert!(b.len() <= Self::MAX);
        let len = b.len() as u16;
        // SAFETY: `Box::into_raw` never returns null.
        let ptr = unsafe { NonNull::new_unchecked(Box::into_raw(b) as *mut T) };
        Tiny {
            ptr,
            len,
            _owns: PhantomData,
        }
    }

    /// Back into the boxed slice it was made from; `self` is left empty.
    fn take_box(&mut self) -> Box<[T]> {
        let (ptr, len) = (self.ptr, self.len);
        self.ptr = NonNull::dangling();
        self.len = 0;
        // SAFETY: `ptr` and `len` came from `Box::into_raw` of a `Box<[T]>` of that length
        // (or are a dangling pointer and 0, which is how an empty boxed slice is made), and
        // `self` no longer refers to them.
        unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                ptr.as_ptr(),
                usize::from(len),
            ))
        }
    }

    fn from_vec(mut v: Vec<T>) -> Tiny<T> {
        if v.len() > Self::MAX {
            v.drain(..v.len() - Self::MAX);
        }
        Tiny::from_box(v.into_boxed_slice())
    }

    fn edit(&mut self, f: impl FnOnce(&mut Vec<T>)) {
        // A panic in `f` leaves the list empty, never freed twice.
        let mut v = self.take_box().into_vec();
        f(&mut v);
        *self = Tiny::from_vec(v);
    }

    /// Adds `x` at the end (dropping the first entry if the list is at [`Tiny::MAX`]).
    pub fn push(&mut self, x: T) {
        self.push_capped(Self::MAX, x);
    }
    /// Adds `x` at the end of a list kept to `cap` entries: when it holds `cap` already, the
    /// first (oldest) entry goes, in the same reallocation.
    pub fn push_capped(&mut self, cap: usize, x: T) {
        self.edit(|v| {
            if !v.is_empty() && v.len() >= cap.min(Self::MAX) {
                v.remove(0);
            }
            v.reserve_exact(1);
            v.push(x)
        });
    }
    /// Removes and returns entry `i`. Panics if `i` is out of bounds, like `Vec::remove`.
    pub fn remove(&mut self, i: usize) -> T {
        let mut out = None;
        self.edit(|v| out = Some(v.remove(i)));
        out.expect("removed")
    }
    /// Keeps the entries `keep` says yes to. `keep` must be a plain test of the entry: it
    /// may be asked twice about one (a first pass looks whether anything goes at all).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        if self.iter().all(&mut keep) {
            return;
        }
        self.edit(|v| v.retain(keep));
    }
    pub fn back(&self) -> Option<&T> {
        self.last()
    }
    pub fn back_mut(&mut self) -> Option<&mut T> {
        self.last_mut()
    }
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val::<[T]>(self)
    }
}

/// [`Tiny::retain`] on a list shared copy-on-write: copies it (if a save still holds it) only
/// when something goes.
pub fn retain_shared<T: Clone>(list: &mut triomphe::Arc<Tiny<T>>, keep: impl Fn(&T) -> bool) {
    if !list.iter().all(&keep) {
        triomphe::Arc::make_mut(list).retain(keep);
    }
}

impl<T> Drop for Tiny<T> {
    fn drop(&mut self) {
        drop(self.take_box());
    }
}

impl<T> Default for Tiny<T> {
    fn default() -> Self {
        Tiny::from_box(Box::new([]))
    }
}
impl<T> Deref for Tiny<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let (ptr, len) = (self.ptr, self.len);
        // SAFETY: `ptr` points to `len` initialised entries owned by `self` (or dangles with
        // `len` 0), aligned for `T` (from a `Box<[T]>`); the borrow of `self` keeps them.
        unsafe { std::slice::from_raw_parts(ptr.as_ptr(), usize::from(len)) }
    }
}
impl<T> DerefMut for Tiny<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let (ptr, len) = (self.ptr, self.len);
        // SAFETY: as in `deref`, and the unique borrow of `self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), usize::from(len)) }
    }
}
impl<T: Clone> Clone for Tiny<T> {
    fn clone(&self) -> Self {
        Tiny::from_box(self.iter().cloned().collect())
    }
}
impl<T: PartialEq> PartialEq for Tiny<T> {
    fn eq(&self, o: &Self) -> bool {
        **self == **o
    }
}
impl<T: fmt::Debug> fmt::Debug for Tiny<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}
impl<T> From<Vec<T>> for Tiny<T> {
    /// Keeps the last [`Tiny::MAX`] entries.
    fn from(v: Vec<T>) -> Self {
        Tiny::from_vec(v)
    }
}
impl<T> FromIterator<T> for Tiny<T> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Self {
        Tiny::from_vec(it.into_iter().collect())
    }
}
impl<'a, T> IntoIterator for &'a Tiny<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
impl<T: Serialize> Serialize for Tiny<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Tiny<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(Tiny::from)
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    #[test]
    fn ten_bytes_inline() {
        assert_eq!(std::mem::size_of::<Tiny<u64>>(), 10);
        assert_eq!(std::mem::size_of::<Tiny<String>>(), 10);
        assert_eq!(std::mem::align_of::<Tiny<u64>>(), 2);
    }

    #[test]
    fn behaves_like_a_vec_and_frees_every_entry_once() {
        // `Rc` counts tell whether an entry was dropped, kept, or dropped twice.
        let item = Rc::new(());
        let mut t: Tiny<Rc<()>> = Tiny::default();
        assert!(t.is_empty());
        for _ in 0..5 {
            t.push(item.clone());
        }
        assert_eq!(t.len(), 5);
        assert_eq!(Rc::strong_count(&item), 6);
        let c = t.clone();
        assert_eq!(Rc::strong_count(&item), 11);
        drop(c);
        t.push_capped(5, item.clone());
        t.remove(1);
        t.remove(0);
        t.remove(2);
        assert_eq!(t.len(), 2);
        assert_eq!(Rc::strong_count(&item), 3);
        let other = Rc::new(());
        t.push(other.clone());
        t.retain(|x| Rc::ptr_eq(x, &other));
        assert_eq!(t.len(), 1);
        assert_eq!(Rc::strong_count(&item), 1);
        drop(t);
        assert_eq!(
            Rc::strong_count(&other),
            1,
            "nothing leaked, nothing freed twice"
        );
    }

    #[test]
    fn values_and_order_survive_edits_and_serde() {
        let mut t: Tiny<u32> = (1..=4).collect();
        t.push(5);
        t[0] = 10;
        assert_eq!(&*t, &[10, 2, 3, 4, 5]);
        assert_eq!(t.back(), Some(&5));
        *t.back_mut().unwrap() = 50;
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "[10,2,3,4,50]");
        let back: Tiny<u32> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(t.heap_bytes(), 20);
    }

    #[test]
    fn a_capped_push_drops_the_oldest_only_when_full() {
        let mut t: Tiny<u32> = Tiny::default();
        for x in 1..=3 {
            t.push_capped(3, x);
        }
        assert_eq!(&*t, &[1, 2, 3]);
        t.push_capped(3, 4);
        assert_eq!(&*t, &[2, 3, 4]);
        // A cap of 0 or 1 still keeps the newest entry, as popping first and pushing did.
        t.push_capped(1, 5);
        assert_eq!(&*t, &[3, 4, 5], "one goes per push, as before");
        let mut one: Tiny<u32> = Tiny::default();
        one.push_capped(0, 1);
        one.push_capped(0, 2);
        assert_eq!(&*one, &[2]);
    }

    #[test]
    fn retain_shared_copies_only_when_something_goes() {
        let mut list = triomphe::Arc::new(Tiny::from(vec![1u32, 2, 3]));
        let saved = list.clone();
        retain_shared(&mut list, |x| *x > 0);
        assert!(
            triomphe::Arc::ptr_eq(&list, &saved),
            "nothing went: still shared"
        );
        retain_shared(&mut list, |x| *x > 1);
        assert_eq!((&**list, &**saved), (&[2, 3][..], &[1, 2, 3][..]));
    }

    #[test]
    fn more_than_max_keeps_the_newest() {
        let t: Tiny<u32> = (0..Tiny::<u32>::MAX as u32 + 3).collect();
        assert_eq!(t.len(), Tiny::<u32>::MAX);
        assert_eq!(t[0], 3);
        let mut t = t;
        t.push(u32::MAX);
        assert_eq!(t.len(), Tiny::<u32>::MAX);
        assert_eq!((t[0], *t.back().unwrap()), (4, u32::MAX));
    }
}
