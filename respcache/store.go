package respcache

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"time"
)

// Entry is one cached answer: the complete JSON response body (a streamed
// answer is stored assembled, see AssembleSSE) and when it was stored.
type Entry struct {
	Body     []byte
	StoredAt time.Time
}

// Age is how old e is at now, in whole seconds (the Age header).
func (e Entry) Age(now time.Time) time.Duration {
	if d := now.Sub(e.StoredAt); d > 0 {
		return d
	}
	return 0
}

// Store keeps entries. Implementations must be safe for concurrent use and
// honour ctx's deadline.
type Store interface {
	// Get returns the entry at key; ok false when there is none.
	Get(ctx context.Context, key string) (e Entry, ok bool, err error)
	// Set stores e at key for ttl.
	Set(ctx context.Context, key string, e Entry, ttl time.Duration) error
	// Name is the store's kind for logs ("memory", "redis").
	Name() string
	Close() error
}

// entryMagic starts an encoded entry; a value that does not is ignored.
const entryMagic = "rc1"

// encode lays e out as "rc1" + stored-at (unix ms, 8 bytes) + body.
func encode(e Entry) []byte {
	b := make([]byte, 0, len(entryMagic)+8+len(e.Body))
	b = append(b, entryMagic...)
	b = binary.BigEndian.AppendUint64(b, uint64(e.StoredAt.UnixMilli()))
	return append(b, e.Body...)
}

var errBadEntry = errors.New("respcache: malformed entry")

func decode(b []byte) (Entry, error) {
	if len(b) < len(entryMagic)+8 || string(b[:len(entryMagic)]) != entryMagic {
		return Entry{}, errBadEntry
	}
	ms := binary.BigEndian.Uint64(b[len(entryMagic):])
	return Entry{Body: b[len(entryMagic)+8:], StoredAt: time.UnixMilli(int64(ms))}, nil
}

// Memory is an in-process LRU bounded by the bytes it holds (keys and
// bodies); entries also expire after their TTL.
type Memory struct {
	mu       sync.Mutex
	maxBytes int64
	bytes    int64
	ll       *list.List
	items    map[string]*list.Element
	now      func() time.Time
}

type memItem struct {
	key     string
	e       Entry
	expires time.Time
}

// NewMemory returns an empty LRU holding at most maxBytes.
func NewMemory(maxBytes int64) *Memory {
	return &Memory{maxBytes: maxBytes, ll: list.New(), items: map[string]*list.Element{}, now: time.Now}
}

func (m *Memory) Name() string { return "memory" }
func (m *Memory) Close() error { return nil }

func itemSize(key string, body []byte) int64 { return int64(len(key)+len(body)) + 64 }

// Get implements Store.
func (m *Memory) Get(_ context.Context, key string) (Entry, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.items[key]
	if !ok {
		return Entry{}, false, nil
	}
	it := el.Value.(*memItem)
	if !m.now().Before(it.expires) {
		m.remove(el)
		return Entry{}, false, nil
	}
	m.ll.MoveToFront(el)
	return it.e, true, nil
}

// Set implements Store. An entry larger than the whole bound is not kept.
func (m *Memory) Set(_ context.Context, key string, e Entry, ttl time.Duration) error {
	size := itemSize(key, e.Body)
	if size > m.maxBytes || ttl <= 0 {
		return nil
	}
	e.Body = append([]byte(nil), e.Body...)
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.items[key]; ok {
		m.remove(el)
	}
	m.items[key] = m.ll.PushFront(&memItem{key: key, e: e, expires: m.now().Add(ttl)})
	m.bytes += size
	for m.bytes > m.maxBytes {
		m.remove(m.ll.Back())
	}
	return nil
}

func (m *Memory) remove(el *list.Element) {
	it := el.Value.(*memItem)
	m.ll.Remove(el)
	delete(m.items, it.key)
	m.bytes -= itemSize(it.key, it.e.Body)
}

// Len and Bytes describe the contents (tests, metrics).
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ll.Len()
}

func (m *Memory) Bytes() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bytes
}
