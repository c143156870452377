<?php
/**
 * KiviCare's actions → KiviHook events, built at the moment of the action and written to
 * the outbox in the same request. Nothing here talks to KiviHook.
 */

if (!defined('ABSPATH')) {
    exit;
}

final class KiviHook_Bridge_Events
{
    /**
     * Every KiviCare action the bridge listens to, across versions: action => [event type,
     * the kind of record its first argument names]. The first argument is a record id or
     * the record as an array (KiviCare 4 passes arrays where 3.x passed ids).
     */
    public const ACTIONS = [
        // Appointments. 4.x fires kc_after_create_appointment; 3.x and the webhook add-on
        // use kc_appointment_book. Both are hooked; one booking gives one event.
        'kc_after_create_appointment' => ['appointment.booked', 'appointment'],
        'kc_appointment_book' => ['appointment.booked', 'appointment'],
        'kc_appointment_update' => ['appointment.updated', 'appointment'],
        'kc_appointment_updated' => ['appointment.updated', 'appointment'],
        'kc_appointment_delete' => ['appointment.deleted', 'appointment'],
        'kc_appointment_deleted' => ['appointment.deleted', 'appointment'],
        'kc_appointment_status_update' => ['appointment.status_changed', 'appointment'],
        'kc_appointment_cancelled' => ['appointment.cancelled', 'appointment'],
        'kivicare_appointment_cancelled' => ['appointment.cancelled', 'appointment'],
        'kc_appointment_payment_complete' => ['appointment.payment_completed', 'appointment'],
        'kc_appointment_payment_completed' => ['appointment.payment_completed', 'appointment'],
        'kc_appointment_payment_cancelled' => ['appointment.payment_cancelled', 'appointment'],
        // Encounters.
        'kc_encounter_save' => ['encounter.created', 'encounter'],
        'kc_encounter_update' => ['encounter.updated', 'encounter'],
        'kc_encounter_delete' => ['encounter.deleted', 'encounter'],
        'kc_before_delete_encounter' => ['encounter.deleted', 'encounter'],
        // People: a save is followed by a registration action in 4.x; one event for both.
        'kc_patient_save' => ['patient.created', 'patient'],
        'kivicare_patient_registered' => ['patient.created', 'patient'],
        'kc_patient_update' => ['patient.updated', 'patient'],
        'kc_patient_delete' => ['patient.deleted', 'patient'],
        'kc_doctor_save' => ['doctor.created', 'doctor'],
        'kc_doctor_register' => ['doctor.created', 'doctor'],
        'kc_doctor_update' => ['doctor.updated', 'doctor'],
        'kc_doctor_delete' => ['doctor.deleted', 'doctor'],
        'kc_receptionist_save' => ['receptionist.created', 'receptionist'],
        'kc_receptionist_created' => ['receptionist.created', 'receptionist'],
        'kc_receptionist_register' => ['receptionist.created', 'receptionist'],
        'kc_receptionist_update' => ['receptionist.updated', 'receptionist'],
        'kc_receptionist_delete' => ['receptionist.deleted', 'receptionist'],
        // Clinics (KiviCare Pro).
        'kcpro_clinic_save' => ['clinic.created', 'clinic'],
        'kcpro_clinic_update' => ['clinic.updated', 'clinic'],
        'kcpro_clinic_delete' => ['clinic.deleted', 'clinic'],
        // Bills, prescriptions, services.
        'kc_encounter_bill_generate' => ['bill.created', 'bill'],
        'kc_encounter_bill_update' => ['bill.updated', 'bill'],
        'kivicare_after_update_bill' => ['bill.updated', 'bill'],
        'kc_prescription_created' => ['prescription.created', 'prescription'],
        'kc_prescription_updated' => ['prescription.updated', 'prescription'],
        'kc_service_add' => ['service.added', 'service'],
        'kc_service_update' => ['service.updated', 'service'],
        'kc_service_delete' => ['service.deleted', 'service'],
    ];

    /** Appointment statuses as KiviCare numbers them. */
    public const APPOINTMENT_STATUS = [0 => 'cancelled', 1 => 'booked', 2 => 'pending', 3 => 'checked_out', 4 => 'checked_in'];

    /** Types derived from a status, beside the generic event. */
    private const STATUS_EVENTS = [0 => 'appointment.cancelled', 3 => 'appointment.checked_out', 4 => 'appointment.checked_in'];

    /** @var array<string,true> what this request already wrote, so aliases give one event */
    private static array $seen = [];

    private static bool $wrote = false;

    public static function register(): void
    {
        foreach (array_keys(self::ACTIONS) as $action) {
            add_action($action, static function (...$args) use ($action): void {
                self::on_action($action, $args);
            }, 20, 4);
        }
    }

    /** Every event type the bridge can send, in catalogue order, with its action names. */
    public static function types(): array
    {
        $out = [];
        foreach (self::ACTIONS as $action => [$type]) {
            $out[$type][] = $action;
        }
        foreach (['appointment.checked_in', 'appointment.checked_out', 'encounter.closed', 'bill.paid'] as $derived) {
            $out[$derived] = $out[$derived] ?? [];
        }
        ksort($out);
        return $out;
    }

    /** Whether this request wrote anything to the outbox. */
    public static function wrote(): bool
    {
        return self::$wrote;
    }

    /** Forget what this request wrote (a long-running process handling many requests). */
    public static function reset_request(): void
    {
        self::$seen = [];
    }

    /** @param array<int,mixed> $args */
    public static function on_action(string $action, array $args): void
    {
        try {
            [$type, $kind] = self::ACTIONS[$action];
            $first = $args[0] ?? null;
            $id = self::id_of($first, $kind);
            $input = is_array($first) ? $first : (is_object($first) ? get_object_vars($first) : []);
            [$clinic_id, $data] = self::build($kind, $id, $input);
            $record_id = (string) ($id ?? '');
            if ($kind === 'bill' && $record_id === '') {
                // 3.x passes the bill's fields without its id: the bill of the encounter.
                $record_id = (string) ($data['bill_id'] ?? '');
                if ($record_id === '' && !empty($data['encounter_id'])) {
                    $record_id = 'encounter-' . $data['encounter_id'];
                }
            }

            if ($action === 'kc_appointment_status_update') {
                $status = isset($args[1]) && is_numeric($args[1]) ? (int) $args[1] : ($data['appointment_status'] ?? null);
                if ($status !== null) {
                    $data['appointment_status'] = (int) $status;
                    $data['appointment_status_label'] = self::APPOINTMENT_STATUS[(int) $status] ?? (string) $status;
                    $data['appointment']['appointment_status'] = (int) $status;
                    $data['appointment']['appointment_status_label'] = $data['appointment_status_label'];
                }
                self::emit($action, $type, $record_id, $clinic_id, $data, (string) $status);
                if ($status !== null && isset(self::STATUS_EVENTS[(int) $status])) {
                    self::emit($action, self::STATUS_EVENTS[(int) $status], $record_id, $clinic_id, $data);
                }
                return;
            }

            self::emit($action, $type, $record_id, $clinic_id, $data);

            // A generic update that reached a milestone also sends the milestone, once.
            if ($type === 'encounter.updated' && isset($data['encounter_status']) && (string) $data['encounter_status'] === '0') {
                self::emit($action, 'encounter.closed', $record_id, $clinic_id, $data, '', true);
            }
            if ($type === 'bill.updated' && strtolower((string) ($data['bill_payment_status'] ?? '')) === 'paid') {
                self::emit($action, 'bill.paid', $record_id, $clinic_id, $data, '', true);
            }
        } catch (\Throwable $e) {
            // Never break the clinic's request.
            error_log('kivihook-bridge: ' . $action . ': ' . $e->getMessage());
        }
    }

    /** @param array<string,mixed> $data */
    private static function emit(string $action, string $type, string $record_id, ?string $clinic_id, array $data, string $extra = '', bool $once_ever = false): void
    {
        if (!self::forwarded($type)) {
            return;
        }
        $key = $type . '|' . $record_id . '|' . $extra;
        if ($record_id !== '' && isset(self::$seen[$key])) {
            return;
        }
        self::$seen[$key] = true;
        if ($once_ever && $record_id !== '' && KiviHook_Bridge_Outbox::has($type, $record_id)) {
            return;
        }
        self::enqueue_event($action, $type, $record_id, $clinic_id, $data);
    }

    public static function forwarded(string $type): bool
    {
        $only = get_option('kivihook_bridge_actions', null);
        return !is_array($only) || in_array($type, $only, true) || str_starts_with($type, 'custom.');
    }

    /**
     * Write one event to the outbox.
     *
     * @param array<string,mixed> $data
     */
    public static function enqueue_event(string $action, string $type, string $record_id, $clinic_id, array $data): bool
    {
        $clinic = ($clinic_id === null || $clinic_id === '' || $clinic_id === 0 || $clinic_id === '0') ? null : (string) $clinic_id;
        $now = microtime(true);
        $envelope = [
            'type' => $type,
            'clinic_id' => $clinic,
            'occurred_at' => gmdate('Y-m-d\TH:i:s', (int) $now) . sprintf('.%03dZ', (int) (($now - floor($now)) * 1000)),
            'data' => $data,
        ];
        if ($clinic === null) {
            unset($envelope['clinic_id']);
        }
        $json = wp_json_encode($envelope, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PARTIAL_OUTPUT_ON_ERROR);
        $ok = KiviHook_Bridge_Outbox::insert($action, $type, $record_id, $clinic, (string) $json);
        if ($ok) {
            self::$wrote = true;
        }
        return $ok;
    }

    /** The record id in an action's first argument: an id, or an array / object holding one. */
    private const ID_KEYS = [
        'appointment' => ['id', 'appointment_id'],
        'encounter' => ['id', 'encounter_id'],
        'patient' => ['id', 'ID', 'user_id', 'patient_id'],
        'doctor' => ['id', 'ID', 'user_id', 'doctor_id'],
        'receptionist' => ['id', 'ID', 'user_id', 'receptionist_id'],
        'clinic' => ['id', 'clinic_id'],
        'bill' => ['id', 'bill_id'],
        'prescription' => ['id', 'prescription_id'],
        'service' => ['id', 'service_id'],
    ];

    private static function id_of($first, string $kind): ?string
    {
        if (is_int($first) || (is_string($first) && $first !== '' && ctype_digit($first))) {
            return (string) $first;
        }
        if (is_object($first)) {
            $first = get_object_vars($first);
        }
        if (is_array($first)) {
            foreach (self::ID_KEYS[$kind] ?? ['id'] as $k) {
                if (isset($first[$k]) && $first[$k] !== '' && is_scalar($first[$k])) {
                    return (string) $first[$k];
                }
            }
        }
        return null;
    }

    /**
     * The event's clinic and data: the flat placeholders KiviCare's webhook add-on offers
     * (`patient_name`, `appointment_date`, …) beside the nested records they come from.
     *
     * @param array<string,mixed> $input
     * @return array{0:?string,1:array<string,mixed>}
     */
    private static function build(string $kind, ?string $id, array $input): array
    {
        $groups = [];
        $clinic_id = null;
        switch ($kind) {
            case 'appointment':
                $a = $id !== null ? self::appointment($id) : null;
                $groups['appointment'] = $a ?? self::prefixed('appointment', $input, $id);
                $clinic_id = $a['_clinic_id'] ?? ($input['clinic_id'] ?? null);
                $groups += self::people(['patient' => $a['_patient_id'] ?? ($input['patient_id'] ?? null), 'doctor' => $a['_doctor_id'] ?? ($input['doctor_id'] ?? null)]);
                break;
            case 'encounter':
                $e = $id !== null ? self::encounter($id) : null;
                $groups['encounter'] = $e ?? self::prefixed('encounter', $input, $id);
                $clinic_id = $e['_clinic_id'] ?? ($input['clinic_id'] ?? null);
                $groups += self::people(['patient' => $e['_patient_id'] ?? ($input['patient_id'] ?? null), 'doctor' => $e['_doctor_id'] ?? ($input['doctor_id'] ?? null)]);
                break;
            case 'patient':
            case 'doctor':
            case 'receptionist':
                $groups[$kind] = self::person($kind, $id) ?? self::prefixed($kind, $input, $id);
                $clinic_id = self::clinic_of_person($kind, $id, $input);
                break;
            case 'clinic':
                $groups['clinic'] = null;
                $clinic_id = $id;
                break;
            case 'bill':
                $b = self::bill($id, $input);
                $groups['bill'] = $b;
                $e = !empty($b['encounter_id']) ? self::encounter((string) $b['encounter_id']) : null;
                if ($e) {
                    $groups['encounter'] = $e;
                }
                $clinic_id = $b['_clinic_id'] ?? ($e['_clinic_id'] ?? null);
                $groups['patient'] = self::person('patient', $e['_patient_id'] ?? null);
                $groups['doctor'] = self::person('doctor', $e['_doctor_id'] ?? null);
                if (!empty($b['appointment_id'])) {
                    $groups['appointment'] = self::appointment((string) $b['appointment_id']);
                }
                break;
            case 'prescription':
                $p = self::prescription($id, $input);
                $groups['prescription'] = $p;
                $e = !empty($p['encounter_id']) ? self::encounter((string) $p['encounter_id']) : null;
                if ($e) {
                    $groups['encounter'] = $e;
                }
                $clinic_id = $e['_clinic_id'] ?? ($input['clinic_id'] ?? null);
                $groups['patient'] = self::person('patient', $p['_patient_id'] ?? ($e['_patient_id'] ?? null));
                $groups['doctor'] = self::person('doctor', $e['_doctor_id'] ?? null);
                break;
            case 'service':
                $s = self::service($id, $input);
                $groups['service'] = $s;
                $clinic_id = $s['_clinic_id'] ?? null;
                $groups['doctor'] = self::person('doctor', $s['_doctor_id'] ?? null);
                break;
        }
        if ($clinic_id !== null && $clinic_id !== '' && (string) $clinic_id !== '0') {
            $groups['clinic'] = self::clinic((string) $clinic_id) ?? ['clinic_id' => (string) $clinic_id];
        } else {
            $clinic_id = null;
            unset($groups['clinic']);
        }

        $data = [];
        $nested = [];
        foreach ($groups as $name => $fields) {
            if (!is_array($fields)) {
                continue;
            }
            $clean = array_filter($fields, static fn($k) => !str_starts_with((string) $k, '_'), ARRAY_FILTER_USE_KEY);
            $nested[$name] = $clean;
            foreach ($clean as $k => $v) {
                if (!array_key_exists($k, $data)) {
                    $data[$k] = $v;
                }
            }
        }
        $tz = wp_timezone();
        $local = new DateTimeImmutable('now', $tz);
        $data['current_date'] = $local->format('Y-m-d');
        $data['current_date_time'] = $local->format('Y-m-d H:i:s');
        $data['site_timezone'] = wp_timezone_string();
        $data['site_url'] = home_url();
        foreach ($nested as $name => $fields) {
            $data[$name] = $fields;
        }
        return [$clinic_id === null ? null : (string) $clinic_id, $data];
    }

    /** A record passed as an array, with its keys prefixed the add-on's way. */
    private static function prefixed(string $prefix, array $input, ?string $id): array
    {
        $out = [$prefix . '_id' => $id ?? ''];
        foreach ($input as $k => $v) {
            if (!is_scalar($v) && $v !== null) {
                continue;
            }
            if (in_array($k, ['temp_password', 'password', 'user_pass'], true)) {
                continue; // never forward credentials
            }
            $key = str_starts_with((string) $k, $prefix . '_') ? (string) $k : $prefix . '_' . $k;
            $out[$key] = $v;
        }
        return $out;
    }

    private static function t(string $name): string
    {
        global $wpdb;
        return $wpdb->prefix . $name;
    }

    private static function appointment(string $id): ?array
    {
        global $wpdb;
        // One query: the appointment and its services (kc_appointment_service_mapping).
        $a = $wpdb->get_row($wpdb->prepare(
            'SELECT a.*, GROUP_CONCAT(s.name ORDER BY m.id SEPARATOR \', \') AS kh_service_names, GROUP_CONCAT(s.id ORDER BY m.id) AS kh_service_ids,'
            . ' SUM(s.price) AS kh_total, COUNT(s.id) AS kh_services FROM ' . self::t('kc_appointments') . ' a LEFT JOIN '
            . self::t('kc_appointment_service_mapping') . ' m ON m.appointment_id = a.id LEFT JOIN ' . self::t('kc_services')
            . ' s ON s.id = m.service_id WHERE a.id = %d GROUP BY a.id',
            $id
        ), ARRAY_A);
        if (!$a) {
            return null;
        }
        $status = isset($a['status']) ? (int) $a['status'] : null;
        return [
            'appointment_id' => (string) $a['id'],
            'appointment_date' => (string) ($a['appointment_start_date'] ?? ''),
            'appointment_start_date' => (string) ($a['appointment_start_date'] ?? ''),
            'appointment_start_time' => (string) ($a['appointment_start_time'] ?? ''),
            'appointment_end_date' => (string) ($a['appointment_end_date'] ?? ''),
            'appointment_end_time' => (string) ($a['appointment_end_time'] ?? ''),
            'appointment_timezone' => (string) ($a['appointment_timezone'] ?? '') ?: wp_timezone_string(),
            'appointment_status' => $status,
            'appointment_status_label' => $status === null ? '' : (self::APPOINTMENT_STATUS[$status] ?? (string) $status),
            'appointment_description' => (string) ($a['description'] ?? ''),
            'appointment_visit_type' => (string) ($a['visit_type'] ?? ''),
            'service_names' => (string) ($a['kh_service_names'] ?? ''),
            'service_ids' => (string) ($a['kh_service_ids'] ?? ''),
            'appointment_total_amount' => (int) ($a['kh_services'] ?? 0) > 0 ? number_format((float) $a['kh_total'], 2, '.', '') : '',
            '_clinic_id' => $a['clinic_id'] ?? null,
            '_doctor_id' => $a['doctor_id'] ?? null,
            '_patient_id' => $a['patient_id'] ?? null,
        ];
    }

    private static function encounter(string $id): ?array
    {
        global $wpdb;
        $e = $wpdb->get_row($wpdb->prepare('SELECT * FROM ' . self::t('kc_patient_encounters') . ' WHERE id = %d', $id), ARRAY_A);
        if (!$e) {
            return null;
        }
        return [
            'encounter_id' => (string) $e['id'],
            'encounter_date' => (string) ($e['encounter_date'] ?? ''),
            'encounter_status' => isset($e['status']) ? (int) $e['status'] : null,
            'encounter_description' => (string) ($e['description'] ?? ''),
            'appointment_id' => (string) ($e['appointment_id'] ?? ''),
            '_clinic_id' => $e['clinic_id'] ?? null,
            '_doctor_id' => $e['doctor_id'] ?? null,
            '_patient_id' => $e['patient_id'] ?? null,
        ];
    }

    /** A patient, doctor or receptionist: a WordPress user with KiviCare's meta. */
    private static function person(string $role, $id): ?array
    {
        return self::people([$role => $id])[$role] ?? null;
    }

    /**
     * Several people in one query: WordPress users with KiviCare's meta (`first_name`,
     * `last_name`, `basic_data` JSON with `mobile_number`, `gender`, `dob`, …).
     *
     * @param array<string,mixed> $ids role => user id
     * @return array<string,array<string,mixed>> role => placeholders
     */
    private static function people(array $ids): array
    {
        global $wpdb;
        $ids = array_filter($ids, static fn($id) => $id !== null && $id !== '' && is_numeric($id) && (int) $id > 0);
        if (!$ids) {
            return [];
        }
        $list = implode(',', array_map('intval', array_unique(array_values($ids))));
        $rows = $wpdb->get_results(
            "SELECT u.ID, u.display_name, u.user_email, m.meta_key, m.meta_value FROM {$wpdb->users} u LEFT JOIN {$wpdb->usermeta} m"
            . " ON m.user_id = u.ID AND m.meta_key IN ('first_name', 'last_name', 'basic_data', 'patient_unique_id') WHERE u.ID IN ({$list})",
            ARRAY_A
        ) ?: [];
        $users = [];
        foreach ($rows as $r) {
            $users[(int) $r['ID']] ??= ['display_name' => (string) $r['display_name'], 'email' => (string) $r['user_email'], 'meta' => []];
            if ($r['meta_key'] !== null) {
                $users[(int) $r['ID']]['meta'][$r['meta_key']] = (string) $r['meta_value'];
            }
        }
        $out = [];
        foreach ($ids as $role => $id) {
            $u = $users[(int) $id] ?? null;
            if ($u === null) {
                continue;
            }
            $basic = json_decode($u['meta']['basic_data'] ?? '', true);
            $basic = is_array($basic) ? $basic : [];
            $first = $u['meta']['first_name'] ?? '';
            $last = $u['meta']['last_name'] ?? '';
            $p = [
                $role . '_id' => (string) (int) $id,
                $role . '_name' => $u['display_name'] !== '' ? $u['display_name'] : trim($first . ' ' . $last),
                $role . '_first_name' => $first,
                $role . '_last_name' => $last,
                $role . '_email' => $u['email'],
            ];
            foreach (['contact_number' => 'mobile_number', 'gender' => 'gender', 'dob' => 'dob', 'address' => 'address',
                'city' => 'city', 'country' => 'country', 'postal_code' => 'postal_code'] as $name => $key) {
                $p[$role . '_' . $name] = is_scalar($basic[$key] ?? null) ? (string) $basic[$key] : '';
            }
            if ($role === 'patient') {
                $p['patient_unique_id'] = $u['meta']['patient_unique_id'] ?? '';
            }
            if ($role === 'doctor') {
                $labels = [];
                foreach (is_array($basic['specialties'] ?? null) ? $basic['specialties'] : [] as $sp) {
                    $labels[] = is_array($sp) ? (string) ($sp['label'] ?? '') : (string) $sp;
                }
                $p['doctor_specialty'] = implode(', ', array_filter($labels));
            }
            $out[$role] = $p;
        }
        return $out;
    }

    private static function clinic_of_person(string $role, ?string $id, array $input)
    {
        global $wpdb;
        if ($id !== null) {
            $clinic = $wpdb->get_var($wpdb->prepare(
                'SELECT clinic_id FROM ' . self::t('kc_' . $role . '_clinic_mappings') . " WHERE {$role}_id = %d ORDER BY id LIMIT 1",
                $id
            ));
            if ($clinic) {
                return $clinic;
            }
        }
        foreach (['clinic_id', 'clinics'] as $k) {
            $v = $input[$k] ?? null;
            if (is_array($v)) {
                $v = $v[0] ?? null;
                $v = is_array($v) ? ($v['value'] ?? $v['id'] ?? null) : $v;
            }
            if (is_scalar($v) && $v !== '') {
                return $v;
            }
        }
        return null;
    }

    private static function clinic(string $id): ?array
    {
        global $wpdb;
        $c = $wpdb->get_row($wpdb->prepare('SELECT * FROM ' . self::t('kc_clinics') . ' WHERE id = %d', $id), ARRAY_A);
        if (!$c) {
            return null;
        }
        $address = implode(', ', array_filter([
            $c['address'] ?? '', $c['city'] ?? '', $c['postal_code'] ?? '', $c['country'] ?? '',
        ], static fn($v) => $v !== null && $v !== ''));
        return [
            'clinic_id' => (string) $c['id'],
            'clinic_name' => (string) ($c['name'] ?? ''),
            'clinic_email' => (string) ($c['email'] ?? ''),
            'clinic_contact_number' => (string) ($c['telephone_no'] ?? ''),
            'clinic_address' => $address,
            'clinic_city' => (string) ($c['city'] ?? ''),
            'clinic_country' => (string) ($c['country'] ?? ''),
            'clinic_postal_code' => (string) ($c['postal_code'] ?? ''),
            'clinic_status' => isset($c['status']) ? (int) $c['status'] : null,
        ];
    }

    private static function bill(?string $id, array $input): array
    {
        global $wpdb;
        if ($id !== null) {
            $b = $wpdb->get_row($wpdb->prepare('SELECT * FROM ' . self::t('kc_bills') . ' WHERE id = %d', $id), ARRAY_A);
        } elseif (!empty($input['encounter_id']) && is_numeric($input['encounter_id'])) {
            $b = $wpdb->get_row($wpdb->prepare('SELECT * FROM ' . self::t('kc_bills') . ' WHERE encounter_id = %d ORDER BY id DESC LIMIT 1', $input['encounter_id']), ARRAY_A);
        } else {
            $b = null;
        }
        // A bill being generated is not in the table yet: its fields are the action's argument.
        // The action's argument is the new state (3.x fires before writing it): it wins.
        $b = $b ? array_merge($b, array_filter($input, 'is_scalar')) : $input;
        $out = [
            'bill_id' => (string) ($b['id'] ?? ''),
            'bill_title' => (string) ($b['title'] ?? ''),
            'bill_total_amount' => (string) ($b['total_amount'] ?? ''),
            'bill_discount' => (string) ($b['discount'] ?? ''),
            'bill_actual_amount' => (string) ($b['actual_amount'] ?? ''),
            'bill_status' => isset($b['status']) && is_scalar($b['status']) ? (string) $b['status'] : '',
            'bill_payment_status' => is_scalar($b['payment_status'] ?? null) ? (string) $b['payment_status'] : '',
            'encounter_id' => (string) ($b['encounter_id'] ?? ''),
            'appointment_id' => (string) ($b['appointment_id'] ?? ''),
        ];
        if (!empty($b['clinic_id'])) {
            $out['_clinic_id'] = $b['clinic_id'];
        }
        return $out;
    }

    private static function prescription(?string $id, array $input): array
    {
        global $wpdb;
        $p = $id !== null
            ? $wpdb->get_row($wpdb->prepare('SELECT * FROM ' . self::t('kc_prescription') . ' WHERE id = %d', $id), ARRAY_A)
            : null;
        $p = $p ? array_merge($input, $p) : $input;
        return [
            'prescription_id' => (string) ($p['id'] ?? ($id ?? '')),
            'prescription_name' => (string) ($p['name'] ?? ''),
            'prescription_frequency' => (string) ($p['frequency'] ?? ''),
            'prescription_duration' => (string) ($p['duration'] ?? ''),
            'prescription_instruction' => (string) ($p['instruction'] ?? ''),
            'encounter_id' => (string) ($p['encounter_id'] ?? ''),
            '_patient_id' => $p['patient_id'] ?? null,
        ];
    }

    private static function service(?string $id, array $input): array
    {
        global $wpdb;
        $s = $id !== null
            ? $wpdb->get_row($wpdb->prepare('SELECT * FROM ' . self::t('kc_services') . ' WHERE id = %d', $id), ARRAY_A)
            : null;
        $s = $s ? array_merge($input, $s) : $input;
        $map = $id !== null ? $wpdb->get_row($wpdb->prepare(
            'SELECT clinic_id, doctor_id, charges FROM ' . self::t('kc_service_doctor_mapping') . ' WHERE service_id = %d ORDER BY id LIMIT 1',
            $id
        ), ARRAY_A) : null;
        return [
            'service_id' => (string) ($s['id'] ?? ($id ?? '')),
            'service_name' => (string) ($s['name'] ?? ''),
            'service_price' => (string) ($map['charges'] ?? ($s['price'] ?? '')),
            'service_category' => (string) ($s['type'] ?? ''),
            'service_status' => isset($s['status']) && is_scalar($s['status']) ? (int) $s['status'] : null,
            '_clinic_id' => $map['clinic_id'] ?? ($input['clinic_id'] ?? null),
            '_doctor_id' => $map['doctor_id'] ?? ($input['doctor_id'] ?? null),
        ];
    }
}
