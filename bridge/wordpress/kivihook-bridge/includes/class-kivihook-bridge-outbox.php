<?php
/**
 * The outbox: one row per event, written in the clinic's request, read by the sender.
 */

if (!defined('ABSPATH')) {
    exit;
}

final class KiviHook_Bridge_Outbox
{
    public const PENDING = 0;
    public const SENT = 1;
    /** Refused by KiviHook (a 4xx naming the event): kept for a person to look at, not retried. */
    public const PARKED = 2;

    private const DB_VERSION = '1';

    public static function table(): string
    {
        global $wpdb;
        return $wpdb->prefix . 'kivihook_outbox';
    }

    public static function install(): void
    {
        global $wpdb;
        require_once ABSPATH . 'wp-admin/includes/upgrade.php';
        $table = self::table();
        $charset = $wpdb->get_charset_collate();
        dbDelta("CREATE TABLE {$table} (
  id bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  action varchar(100) NOT NULL,
  event_type varchar(100) NOT NULL,
  record_id varchar(64) NOT NULL DEFAULT '',
  clinic_id varchar(64) DEFAULT NULL,
  payload longtext NOT NULL,
  status tinyint(3) unsigned NOT NULL DEFAULT 0,
  attempts int(10) unsigned NOT NULL DEFAULT 0,
  last_error text,
  created_at datetime NOT NULL,
  sent_at datetime DEFAULT NULL,
  PRIMARY KEY  (id),
  KEY status_id (status,id),
  KEY status_sent (status,sent_at),
  KEY type_record (event_type,record_id)
) {$charset};");
        update_option('kivihook_bridge_db_version', self::DB_VERSION);
    }

    /** Create the table when the plugin was updated or copied in without activation. */
    public static function maybe_upgrade(): void
    {
        if (get_option('kivihook_bridge_db_version') !== self::DB_VERSION) {
            self::install();
        }
    }

    /** A connection of the bridge's own, for writes that do not wait for the disk. */
    private static ?mysqli $link = null;
    private static bool $link_failed = false;
    /** The INSERT in flight on that connection, re-run through $wpdb if it fails. */
    private static ?string $inflight = null;

    /**
     * Write one event.
     *
     * The INSERT is sent at once on a connection of the bridge's own, without waiting for
     * the commit's flush to disk (several milliseconds on a plain disk): the server commits
     * it whatever the request does next, and the request collects the answer at its end
     * (flush()), after the response when PHP-FPM can finish it early. Without mysqli, or
     * when that connection cannot be made, the INSERT goes through $wpdb and waits.
     */
    public static function insert(string $action, string $type, string $record_id, ?string $clinic_id, string $payload): bool
    {
        global $wpdb;
        $values = [substr($action, 0, 100), substr($type, 0, 100), substr($record_id, 0, 64),
            $clinic_id === null ? null : substr($clinic_id, 0, 64), $payload];
        $columns = 'INSERT INTO ' . self::table() . ' (action, event_type, record_id, clinic_id, payload, status, created_at) VALUES (';
        $link = self::link();
        if ($link !== null) {
            // Escaped by the connection that runs it, in its character set: the payload is
            // the largest part of a clinic request's write, and $wpdb->prepare() would pass it
            // through several regular expressions first.
            $quoted = array_map(static fn(?string $v): string => $v === null ? 'NULL' : "'" . $link->real_escape_string($v) . "'", $values);
            $sql = $columns . implode(', ', $quoted) . ', ' . self::PENDING . ", '" . gmdate('Y-m-d H:i:s') . "')";
        } else {
            $sql = $wpdb->prepare(
                $columns . '%s, %s, %s, ' . ($clinic_id === null ? 'NULL' : '%s') . ', %s, %d, %s)',
                ...array_merge(array_values(array_filter($values, static fn($v) => $v !== null)), [self::PENDING, gmdate('Y-m-d H:i:s')])
            );
        }
        if ($link !== null) {
            self::flush();
            try {
                if ($link->query($sql, MYSQLI_ASYNC) !== false) {
                    self::$inflight = $sql;
                    return true;
                }
            } catch (\Throwable $e) {
                // fall through to the synchronous write
            }
            self::$link = null;
            self::$link_failed = true;
        }
        return $wpdb->query($sql) !== false;
    }

    /** Collect the answer of the INSERT in flight; re-run it through $wpdb if it failed. */
    public static function flush(): void
    {
        if (self::$inflight === null || self::$link === null) {
            return;
        }
        $sql = self::$inflight;
        self::$inflight = null;
        try {
            $ok = self::$link->reap_async_query() !== false;
        } catch (\Throwable $e) {
            $ok = false;
        }
        if (!$ok) {
            global $wpdb;
            error_log('kivihook-bridge: outbox write failed on its own connection, retried through $wpdb');
            self::$link = null;
            self::$link_failed = true;
            $wpdb->query($sql);
        }
    }

    /** Close the bridge's own connection (the end of a request in a long-running process). */
    public static function close(): void
    {
        self::flush();
        if (self::$link !== null) {
            self::$link->close();
        }
        self::$link = null;
        self::$link_failed = false;
    }

    private static function link(): ?mysqli
    {
        global $wpdb;
        if (self::$link !== null || self::$link_failed) {
            return self::$link;
        }
        self::$link_failed = true;
        if (!class_exists('mysqli') || !defined('DB_HOST') || !defined('DB_USER') || !defined('DB_NAME')
            || !($wpdb instanceof wpdb) || get_class($wpdb) !== 'wpdb'
            || apply_filters('kivihook_bridge_async_write', true) === false) {
            return null; // a database drop-in (HyperDB, …) knows better where to write
        }
        $parsed = $wpdb->parse_db_host(DB_HOST);
        if ($parsed === false) {
            return null;
        }
        [$host, $port, $socket, $is_ipv6] = $parsed;
        if ($is_ipv6 && extension_loaded('mysqlnd')) {
            $host = "[{$host}]";
        }
        $link = mysqli_init();
        try {
            $flags = defined('MYSQL_CLIENT_FLAGS') ? MYSQL_CLIENT_FLAGS : 0;
            // A persistent link: a PHP-FPM worker connects once, not on every clinic request.
            if (!@$link->real_connect('p:' . $host, DB_USER, defined('DB_PASSWORD') ? DB_PASSWORD : '', DB_NAME, $port ? (int) $port : null, $socket, $flags)) {
                return null;
            }
            $link->set_charset($wpdb->charset ?: 'utf8mb4');
        } catch (\Throwable $e) {
            return null;
        }
        self::$link_failed = false;
        self::$link = $link;
        return $link;
    }

    /** @return array<int,object> the oldest pending rows */
    public static function pending(int $limit): array
    {
        global $wpdb;
        self::flush();
        $table = self::table();
        return $wpdb->get_results($wpdb->prepare(
            "SELECT id, action, event_type, record_id, clinic_id, payload, attempts FROM {$table} WHERE status = %d ORDER BY id LIMIT %d",
            self::PENDING,
            $limit
        )) ?: [];
    }

    /** @param int[] $ids */
    public static function mark_sent(array $ids): void
    {
        global $wpdb;
        if (!$ids) {
            return;
        }
        $table = self::table();
        $list = implode(',', array_map('intval', $ids));
        $wpdb->query($wpdb->prepare(
            "UPDATE {$table} SET status = %d, sent_at = %s, attempts = attempts + 1, last_error = NULL WHERE id IN ({$list}) AND status = %d",
            self::SENT,
            gmdate('Y-m-d H:i:s'),
            self::PENDING
        ));
    }

    public static function park(int $id, string $error): void
    {
        global $wpdb;
        $table = self::table();
        $wpdb->query($wpdb->prepare(
            "UPDATE {$table} SET status = %d, attempts = attempts + 1, last_error = %s WHERE id = %d",
            self::PARKED,
            $error,
            $id
        ));
    }

    /** @param int[] $ids */
    public static function note_failure(array $ids, string $error): void
    {
        global $wpdb;
        if (!$ids) {
            return;
        }
        $table = self::table();
        $list = implode(',', array_map('intval', $ids));
        $wpdb->query($wpdb->prepare(
            "UPDATE {$table} SET attempts = attempts + 1, last_error = %s WHERE id IN ({$list})",
            $error
        ));
    }

    /** Put parked rows back in line (after the cause was fixed). */
    public static function retry_parked(): int
    {
        global $wpdb;
        $table = self::table();
        return (int) $wpdb->query($wpdb->prepare(
            "UPDATE {$table} SET status = %d WHERE status = %d",
            self::PENDING,
            self::PARKED
        ));
    }

    /** Remove sent rows older than the retention period. */
    public static function purge(int $days): int
    {
        global $wpdb;
        $table = self::table();
        return (int) $wpdb->query($wpdb->prepare(
            "DELETE FROM {$table} WHERE status = %d AND sent_at < %s LIMIT 5000",
            self::SENT,
            gmdate('Y-m-d H:i:s', time() - max(1, $days) * DAY_IN_SECONDS)
        ));
    }

    /** @return array{pending:int,sent:int,parked:int,oldest_pending:?string} */
    public static function counts(): array
    {
        global $wpdb;
        self::flush();
        $table = self::table();
        $out = ['pending' => 0, 'sent' => 0, 'parked' => 0, 'oldest_pending' => null];
        $names = [self::PENDING => 'pending', self::SENT => 'sent', self::PARKED => 'parked'];
        foreach ($wpdb->get_results("SELECT status, COUNT(*) AS n FROM {$table} GROUP BY status") ?: [] as $row) {
            if (isset($names[(int) $row->status])) {
                $out[$names[(int) $row->status]] = (int) $row->n;
            }
        }
        $out['oldest_pending'] = $wpdb->get_var($wpdb->prepare(
            "SELECT MIN(created_at) FROM {$table} WHERE status = %d",
            self::PENDING
        ));
        return $out;
    }

    /** @return array<int,object> the most recently parked rows */
    public static function parked(int $limit = 20): array
    {
        global $wpdb;
        $table = self::table();
        return $wpdb->get_results($wpdb->prepare(
            "SELECT id, action, event_type, record_id, last_error, created_at FROM {$table} WHERE status = %d ORDER BY id DESC LIMIT %d",
            self::PARKED,
            $limit
        )) ?: [];
    }

    /** Whether an event of this type about this record was written before (and not purged). */
    public static function has(string $type, string $record_id): bool
    {
        global $wpdb;
        self::flush();
        $table = self::table();
        return (bool) $wpdb->get_var($wpdb->prepare(
            "SELECT 1 FROM {$table} WHERE event_type = %s AND record_id = %s LIMIT 1",
            $type,
            $record_id
        ));
    }

    public static function drop(): void
    {
        global $wpdb;
        $wpdb->query('DROP TABLE IF EXISTS ' . self::table());
    }
}
