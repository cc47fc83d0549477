# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled bounded record ring between emit calls and the flusher."""

cimport cython
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.string cimport memcpy

import sys

from atrace.errors import ConfigError

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(object)
    ctypedef struct PyListObject:
        PyObject** ob_item
    list PyList_New(Py_ssize_t size)
    # A NULL exception type makes an out-of-range int clamp instead of raising.
    Py_ssize_t PyNumber_AsSsize_t(object o, PyObject* exc) except? -1

__all__ = ("POLICIES", "Ring")

POLICIES = ("drop_oldest", "drop_newest", "block")

cdef enum Policy:
    DROP_OLDEST
    DROP_NEWEST
    BLOCK


# Records held by the buffer are invisible to the cycle collector either way, so tracking the ring
# itself would only cost time at creation; a cycle through a stored record lives until it is drained.
@cython.no_gc
cdef class Ring:
    """A bounded FIFO of records for many producer threads and one draining consumer.

    Every method runs without executing Python code between reading and writing the ring state, so
    the GIL alone keeps it consistent: references leave the buffer only after the state is updated.
    """

    cdef PyObject** _buf
    # Only the slots in [_head, _head + _size) modulo capacity own a reference.
    cdef Py_ssize_t _head
    cdef Py_ssize_t _size
    cdef Policy _policy
    cdef readonly Py_ssize_t capacity
    cdef readonly str policy
    cdef readonly Py_ssize_t accepted
    cdef readonly Py_ssize_t dropped
    cdef readonly Py_ssize_t drained
    cdef readonly Py_ssize_t high_water

    def __cinit__(self, capacity, policy="drop_oldest"):
        cdef Py_ssize_t code
        if (
            isinstance(capacity, bool)
            or not isinstance(capacity, int)
            or not 1 <= capacity <= sys.maxsize
        ):
            raise ConfigError("capacity", capacity, f"must be an int from 1 to {sys.maxsize}")
        if policy not in POLICIES:
            raise ConfigError("policy", policy, f"must be one of {', '.join(POLICIES)}")
        code = POLICIES.index(policy)
        self._policy = <Policy>code
        self.policy = POLICIES[code]
        # Calloc checks capacity * sizeof for overflow; the zeroed slots make no reference owned.
        self._buf = <PyObject**>PyMem_Calloc(capacity, sizeof(PyObject*))
        if self._buf is NULL:
            raise MemoryError(f"cannot allocate a ring of capacity {capacity}")
        self.capacity = capacity

    def __dealloc__(self):
        cdef PyObject** buf = self._buf
        cdef Py_ssize_t i = self._head
        cdef Py_ssize_t left = self._size
        if buf is NULL:
            return
        # Detach first: a released record's __del__ must find an empty ring, not a half-freed one.
        self._buf = NULL
        self._size = 0
        while left:
            Py_XDECREF(buf[i])
            i += 1
            if i == self.capacity:
                i = 0
            left -= 1
        PyMem_Free(buf)

    def push(self, object record, /):
        """Store ``record``; when full, apply the policy. Returns whether it was stored."""
        cdef PyObject* evicted
        cdef Py_ssize_t tail
        self.accepted += 1
        if self._size < self.capacity:
            tail = self._head + self._size
            if tail >= self.capacity:
                tail -= self.capacity
            Py_INCREF(record)
            self._buf[tail] = <PyObject*>record
            self._size += 1
            if self._size > self.high_water:
                self.high_water = self._size
            return True
        self.dropped += 1
        # A synchronous emit cannot wait, so "block" refuses like "drop_newest"; waiting belongs
        # to try_push's caller.
        if self._policy != DROP_OLDEST:
            return False
        evicted = self._buf[self._head]
        Py_INCREF(record)
        self._buf[self._head] = <PyObject*>record
        self._head += 1
        if self._head == self.capacity:
            self._head = 0
        # Last, with the ring consistent: this may run the evicted record's __del__.
        Py_XDECREF(evicted)
        return True

    def try_push(self, object record, /):
        """Store ``record`` if there is room; when full, change nothing and return False."""
        cdef Py_ssize_t tail
        if self._size >= self.capacity:
            return False
        self.accepted += 1
        tail = self._head + self._size
        if tail >= self.capacity:
            tail -= self.capacity
        Py_INCREF(record)
        self._buf[tail] = <PyObject*>record
        self._size += 1
        if self._size > self.high_water:
            self.high_water = self._size
        return True

    def drain(self, n, /):
        """Remove and return up to ``n`` records, oldest first."""
        cdef Py_ssize_t want = PyNumber_AsSsize_t(n, NULL)
        cdef Py_ssize_t k, first
        cdef list result
        cdef PyObject** items
        if want <= 0 or self._size == 0:
            return []
        while True:
            k = want if want < self._size else self._size
            # Allocating may run the cycle collector and with it any Python code, including a
            # drain of this ring; the state is read only once the list exists.
            result = PyList_New(k)
            if self._size >= k:
                break
        if k == 0:
            return result
        items = (<PyListObject*>result).ob_item
        first = self.capacity - self._head
        if first > k:
            first = k
        # The buffer's references move into the list as they are: no incref, no decref.
        memcpy(items, self._buf + self._head, <size_t>first * sizeof(PyObject*))
        memcpy(items + first, self._buf, <size_t>(k - first) * sizeof(PyObject*))
        self._head += k
        if self._head >= self.capacity:
            self._head -= self.capacity
        self._size -= k
        self.drained += k
        # Records never point back at this list, so it cannot be part of a cycle; untracked,
        # the collector does not walk (and fault in) thousands of records each time it runs.
        PyObject_GC_UnTrack(result)
        return result

    def __len__(self):
        return self._size

    def counters(self):
        """Return a consistent snapshot of the counters, the size and the capacity."""
        # Read into C locals first: building the dict may run Python code that changes the ring.
        cdef Py_ssize_t accepted = self.accepted
        cdef Py_ssize_t dropped = self.dropped
        cdef Py_ssize_t drained = self.drained
        cdef Py_ssize_t high_water = self.high_water
        cdef Py_ssize_t size = self._size
        return {
            "accepted": accepted,
            "dropped": dropped,
            "drained": drained,
            "high_water": high_water,
            "size": size,
            "capacity": self.capacity,
        }

    def __repr__(self):
        return (
            f"<Ring capacity={self.capacity} policy={self.policy!r} size={self._size} "
            f"accepted={self.accepted} dropped={self.dropped} drained={self.drained}>"
        )
