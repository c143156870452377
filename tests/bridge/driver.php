<?php
/**
 * Test driver for the KiviHook bridge: boots Debian's WordPress (php-cli, no web server)
 * against a database of its own, with KiviCare-shaped tables, and fires KiviCare's actions
 * with KiviCare's own arguments. tests/bridge.rs runs it; one command per process, JSON out.
 *
 * Environment: KH_DB (database), KH_DIR (a scratch directory), KH_PLUGIN (the plugin's
 * directory), KH_WP (WordPress's directory, default /usr/share/wordpress).
 *
 *   php driver.php install URL KEY     create the site, the KiviCare tables, activate the plugin
 *   php driver.php fire-all            every hooked action, one clinic request each
 *   php driver.php book N              N bookings (kc_after_create_appointment)
 *   php driver.php send                do_action('kivihook_bridge_send')
 *   php driver.php counts              the outbox
 *   php driver.php set-url URL | set-key KEY | key-stored | test-connection
 *   php driver.php enqueue-bad         a custom event KiviHook refuses (an invalid type)
 *   php driver.php requeue-sent N      put the last N sent rows back (a lost answer)
 *   php driver.php render              the settings page's HTML, as an administrator
 *   php driver.php uninstall           deactivate and uninstall; report what is left
 *   php driver.php drop                drop the database
 */

$kh_cmd = $argv[1] ?? '';
$kh_db = getenv('KH_DB') ?: exit("KH_DB is required\n");
$kh_dir = getenv('KH_DIR') ?: exit("KH_DIR is required\n");
$kh_plugin_src = getenv('KH_PLUGIN') ?: exit("KH_PLUGIN is required\n");
$kh_wp = rtrim(getenv('KH_WP') ?: '/usr/share/wordpress', '/') . '/';
$kh_tz = 'Europe/Berlin';

if ($kh_cmd === 'drop' || $kh_cmd === 'install') {
    $kh_m = new mysqli('localhost', 'root', '');
    $kh_m->query("DROP DATABASE IF EXISTS `{$kh_db}`");
    if ($kh_cmd === 'drop') {
        echo json_encode(['dropped' => $kh_db]), "\n";
        exit(0);
    }
    $kh_m->query("CREATE DATABASE `{$kh_db}` CHARACTER SET utf8mb4");
    $kh_m->close();
    @mkdir("{$kh_dir}/content/plugins", 0777, true);
    @symlink($kh_plugin_src, "{$kh_dir}/content/plugins/kivihook-bridge");
    define('WP_INSTALLING', true);
}

// The site's configuration, as a wp-config.php would hold it.
define('ABSPATH', $kh_wp);
define('DB_NAME', $kh_db);
define('DB_USER', 'root');
define('DB_PASSWORD', '');
define('DB_HOST', 'localhost');
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
define('WP_CONTENT_DIR', "{$kh_dir}/content");
define('WP_PLUGIN_DIR', "{$kh_dir}/content/plugins");
define('DISABLE_WP_CRON', true);
define('WP_HTTP_BLOCK_EXTERNAL', false);
foreach (['AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY', 'AUTH_SALT', 'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT'] as $salt) {
    define($salt, hash('sha256', $kh_db . $salt));
}
$table_prefix = 'khb_';
$_SERVER['HTTP_HOST'] = 'clinic.test';
$_SERVER['SERVER_NAME'] = 'clinic.test';
$_SERVER['REQUEST_URI'] = '/';
$_SERVER['REQUEST_METHOD'] = 'GET';
$_SERVER['SERVER_PROTOCOL'] = 'HTTP/1.1';
$_SERVER['REMOTE_ADDR'] = '127.0.0.1';

require ABSPATH . 'wp-settings.php';

function out($v): void
{
    echo wp_json_encode($v, JSON_UNESCAPED_SLASHES), "\n";
}

function t(string $name): string
{
    global $wpdb;
    return $wpdb->prefix . $name;
}

/** The ids the seed gives the records, read back. */
function ids(): array
{
    return json_decode((string) get_option('kh_test_ids'), true);
}

function kc_tables(): void
{
    global $wpdb;
    $c = $wpdb->get_charset_collate();
    $tables = [
        'kc_clinics' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, name varchar(191), email varchar(191), telephone_no varchar(191), specialties longtext, address text, city varchar(191), state varchar(191), country varchar(191), postal_code varchar(191), status tinyint DEFAULT 1, clinic_admin_id bigint, created_at datetime',
        'kc_appointments' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, appointment_start_date date, appointment_start_time time, appointment_end_date date, appointment_end_time time, visit_type varchar(191), clinic_id bigint unsigned, doctor_id bigint unsigned, patient_id bigint unsigned, description text, status tinyint, appointment_timezone varchar(64), created_at datetime',
        'kc_services' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, type varchar(191), name varchar(191), price varchar(50), status tinyint DEFAULT 1, created_at datetime',
        'kc_service_doctor_mapping' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, service_id bigint unsigned, clinic_id bigint unsigned, doctor_id bigint unsigned, charges varchar(50), status tinyint DEFAULT 1, created_at datetime',
        'kc_appointment_service_mapping' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, appointment_id bigint unsigned, service_id bigint unsigned, created_at datetime, status tinyint DEFAULT 1',
        'kc_patient_encounters' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, encounter_date date, clinic_id bigint unsigned, doctor_id bigint unsigned, patient_id bigint unsigned, appointment_id bigint unsigned, description text, status tinyint, added_by bigint, created_at datetime',
        'kc_bills' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, encounter_id bigint unsigned, appointment_id bigint unsigned, title varchar(191), total_amount varchar(50), discount varchar(50), actual_amount varchar(50), status bigint, payment_status varchar(10), clinic_id bigint unsigned, created_at datetime',
        'kc_prescription' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, encounter_id bigint unsigned, patient_id bigint unsigned, name text, frequency varchar(199), duration varchar(199), instruction text, added_by bigint, created_at datetime',
        'kc_doctor_clinic_mappings' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, doctor_id bigint unsigned, clinic_id bigint unsigned, owner tinyint DEFAULT 0, created_at datetime',
        'kc_patient_clinic_mappings' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, patient_id bigint unsigned, clinic_id bigint unsigned, created_at datetime',
        'kc_receptionist_clinic_mappings' => 'id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, receptionist_id bigint unsigned, clinic_id bigint unsigned, created_at datetime',
    ];
    foreach ($tables as $name => $cols) {
        $wpdb->query('CREATE TABLE ' . t($name) . " ({$cols}) {$c}");
    }
}

function user(string $login, string $first, string $last, string $email, array $basic, string $display): int
{
    $id = wp_insert_user([
        'user_login' => $login, 'user_pass' => wp_generate_password(), 'user_email' => $email,
        'first_name' => $first, 'last_name' => $last, 'display_name' => $display,
    ]);
    update_user_meta($id, 'basic_data', wp_json_encode($basic));
    return (int) $id;
}

function seed(): array
{
    global $wpdb;
    $now = current_time('mysql');
    $wpdb->query('ALTER TABLE ' . t('kc_clinics') . ' AUTO_INCREMENT = 12');
    $wpdb->insert(t('kc_clinics'), ['name' => 'Central Clinic', 'email' => 'front-desk@clinic.example', 'telephone_no' => '+44 20 7946 0002',
        'address' => '1 High Street', 'city' => 'London', 'postal_code' => 'N1 9GU', 'country' => 'UK', 'status' => 1, 'created_at' => $now]);
    $clinic = (int) $wpdb->insert_id;
    $patient = user('ada', 'Ada', 'Lovelace', 'ada@example.com', ['mobile_number' => '+44 20 7946 0000', 'gender' => 'female', 'dob' => '1990-12-10'], 'Ada Lovelace');
    $doctor = user('grace', 'Grace', 'Hopper', 'grace@clinic.example', ['mobile_number' => '+44 20 7946 0001', 'gender' => 'female', 'specialties' => [['id' => 1, 'label' => 'General practice']]], 'Dr. Grace Hopper');
    $recep = user('alan', 'Alan', 'Turing', 'alan@clinic.example', ['mobile_number' => '+44 20 7946 0003'], 'Alan Turing');
    $wpdb->insert(t('kc_patient_clinic_mappings'), ['patient_id' => $patient, 'clinic_id' => $clinic, 'created_at' => $now]);
    $wpdb->insert(t('kc_doctor_clinic_mappings'), ['doctor_id' => $doctor, 'clinic_id' => $clinic, 'created_at' => $now]);
    $wpdb->insert(t('kc_receptionist_clinic_mappings'), ['receptionist_id' => $recep, 'clinic_id' => $clinic, 'created_at' => $now]);
    $services = [];
    foreach ([['General consultation', '45.00'], ['Blood test', '20.00']] as [$name, $price]) {
        $wpdb->insert(t('kc_services'), ['type' => 'consultation', 'name' => $name, 'price' => $price, 'status' => 1, 'created_at' => $now]);
        $services[] = (int) $wpdb->insert_id;
        $wpdb->insert(t('kc_service_doctor_mapping'), ['service_id' => (int) $wpdb->insert_id, 'clinic_id' => $clinic, 'doctor_id' => $doctor, 'charges' => $price, 'created_at' => $now]);
    }
    return ['clinic' => $clinic, 'patient' => $patient, 'doctor' => $doctor, 'receptionist' => $recep, 'services' => $services];
}

/** An appointment row, as KiviCare's booking writes it before firing its action. */
function appointment(int $status = 1): int
{
    global $wpdb;
    $ids = ids();
    $wpdb->insert(t('kc_appointments'), [
        'appointment_start_date' => '2026-12-01', 'appointment_start_time' => '09:30:00',
        'appointment_end_date' => '2026-12-01', 'appointment_end_time' => '09:45:00',
        'visit_type' => 'General consultation', 'clinic_id' => $ids['clinic'], 'doctor_id' => $ids['doctor'],
        'patient_id' => $ids['patient'], 'description' => 'Follow-up consultation', 'status' => $status,
        'appointment_timezone' => 'Europe/Berlin', 'created_at' => current_time('mysql'),
    ]);
    $id = (int) $wpdb->insert_id;
    foreach ($ids['services'] as $s) {
        $wpdb->insert(t('kc_appointment_service_mapping'), ['appointment_id' => $id, 'service_id' => $s, 'created_at' => current_time('mysql')]);
    }
    return $id;
}

function encounter(int $appointment, int $status = 1): int
{
    global $wpdb;
    $ids = ids();
    $wpdb->insert(t('kc_patient_encounters'), ['encounter_date' => '2026-12-01', 'clinic_id' => $ids['clinic'], 'doctor_id' => $ids['doctor'],
        'patient_id' => $ids['patient'], 'appointment_id' => $appointment, 'description' => 'Annual check-up', 'status' => $status,
        'added_by' => 1, 'created_at' => current_time('mysql')]);
    return (int) $wpdb->insert_id;
}

/** KiviCare 4's array for a saved person (PatientController / DoctorController). */
function person_data(string $role): array
{
    $ids = ids();
    $u = get_userdata($ids[$role]);
    return ['id' => $u->ID, 'first_name' => $u->first_name, 'last_name' => $u->last_name, 'email' => $u->user_email,
        'contact_number' => '+44 20 7946 0000', 'clinic_id' => $ids['clinic'], 'clinics' => [['value' => $ids['clinic']]],
        'temp_password' => 'not-to-be-forwarded', 'created_at' => current_time('mysql')];
}

/** @var array<int,array{actions:string[],args:array,timing_ms:float}> */
$requests = [];

/** One clinic request: these actions, timed together (the time the bridge added). */
function request(array $calls, array $meta = []): void
{
    global $requests;
    KiviHook_Bridge_Events::reset_request();
    $t0 = hrtime(true);
    foreach ($calls as $call) {
        do_action(...$call);
    }
    $ms = (hrtime(true) - $t0) / 1e6;
    // The end of the request: the outbox write's answer is collected (after the response,
    // under PHP-FPM). Timed apart, and reported, not hidden.
    $t1 = hrtime(true);
    KiviHook_Bridge_Outbox::flush();
    $end = (hrtime(true) - $t1) / 1e6;
    // The next request starts afresh, as a PHP request does: no connection, no cached rows,
    // only the autoloaded options, which WordPress loads at every request's start before any
    // plugin runs.
    KiviHook_Bridge_Outbox::close();
    wp_cache_flush();
    wp_load_alloptions();
    $requests[] = ['actions' => array_map(static fn($c) => $c[0], $calls), 'timing_ms' => $ms, 'end_ms' => $end] + $meta;
}

switch ($kh_cmd) {
    case 'install':
        require_once ABSPATH . 'wp-admin/includes/upgrade.php';
        wp_install('KiviCare test clinic', 'admin', 'admin@clinic.example', false, '', wp_generate_password());
        update_option('timezone_string', $kh_tz);
        kc_tables();
        update_option('kh_test_ids', wp_json_encode(seed()));
        require_once ABSPATH . 'wp-admin/includes/plugin.php';
        $r = activate_plugin('kivihook-bridge/kivihook-bridge.php');
        if (is_wp_error($r)) {
            fwrite(STDERR, $r->get_error_message() . "\n");
            exit(1);
        }
        update_option('kivihook_bridge_url', $argv[2] ?? '');
        update_option('kivihook_bridge_key', $argv[3] ?? ''); // in the clear: the plugin seals it on first use
        global $wpdb;
        out(['ids' => ids(), 'table' => (bool) $wpdb->get_var("SHOW TABLES LIKE '" . KiviHook_Bridge_Outbox::table() . "'"),
            'site_id' => get_option('kivihook_bridge_site_id'), 'cron' => (bool) wp_next_scheduled('kivihook_bridge_send')]);
        break;

    case 'fire-all':
        global $wpdb;
        $ids = ids();
        $req = new WP_REST_Request('POST', '/kivicare/api/v1/appointments');
        // Appointments: 4.x booking, 3.x booking, both update names, status changes.
        $a1 = appointment();
        $adata = ['id' => $a1, 'clinic_id' => $ids['clinic'], 'doctor_id' => $ids['doctor'], 'patient_id' => $ids['patient'],
            'appointment_start_date' => '2026-12-01', 'appointment_start_time' => '09:30:00', 'status' => 1];
        request([['kc_after_create_appointment', $a1, $adata, $req]], ['record' => $a1]);
        $a2 = appointment();
        request([['kc_appointment_book', $a2]], ['record' => $a2]);
        request([['kc_appointment_update', $a1]], ['record' => $a1]);
        request([['kc_appointment_updated', $a1, $adata, ['description' => 'moved'], $req]], ['record' => $a1]);
        $wpdb->update(t('kc_appointments'), ['status' => 4], ['id' => $a1]);
        request([['kc_appointment_status_update', $a1, 4, (object) ($adata + ['status' => 4])]], ['record' => $a1, 'status' => 4]);
        $wpdb->update(t('kc_appointments'), ['status' => 3], ['id' => $a1]);
        request([['kc_appointment_status_update', $a1, 3, (object) ($adata + ['status' => 3])]], ['record' => $a1, 'status' => 3]);
        // A cancellation in 4.x: the status change, then kc_appointment_cancelled.
        $wpdb->update(t('kc_appointments'), ['status' => 0], ['id' => $a2]);
        request([['kc_appointment_status_update', $a2, 0, (object) ['id' => $a2, 'status' => 0]], ['kc_appointment_cancelled', $a2]], ['record' => $a2, 'status' => 0]);
        $a3 = appointment(0);
        request([['kivicare_appointment_cancelled', $a3]], ['record' => $a3]);
        request([['kc_appointment_payment_complete', $a1]], ['record' => $a1]);
        request([['kc_appointment_payment_completed', $a3, ['payment_mode' => 'card', 'amount' => '65.00']]], ['record' => $a3]);
        request([['kc_appointment_payment_cancelled', $a3]], ['record' => $a3]);
        request([['kc_appointment_delete', $a2]], ['record' => $a2]);
        request([['kc_appointment_deleted', $a3]], ['record' => $a3]);
        // Encounters: 4.x passes ['id' => …], 3.x the id.
        $e1 = encounter($a1);
        request([['kc_encounter_save', ['id' => $e1]]], ['record' => $e1]);
        $e2 = encounter($a3);
        request([['kc_encounter_save', $e2]], ['record' => $e2]);
        request([['kc_encounter_update', $e1]], ['record' => $e1]);
        $wpdb->update(t('kc_patient_encounters'), ['status' => 0], ['id' => $e1]);
        request([['kc_encounter_update', $e1]], ['record' => $e1, 'closed' => true]);
        request([['kc_encounter_delete', $e2]], ['record' => $e2]);
        request([['kc_before_delete_encounter', $e1]], ['record' => $e1]);
        // People: 4.x saves with an array and the request, then the registration action.
        $p = person_data('patient');
        request([['kc_patient_save', $p, $req], ['kivicare_patient_registered', $p]], ['record' => $p['id']]);
        request([['kc_patient_save', $ids['patient']]], ['record' => $ids['patient']]);
        request([['kc_patient_update', $p, $req]], ['record' => $p['id']]);
        request([['kc_patient_delete', $ids['patient']]], ['record' => $ids['patient']]);
        $d = person_data('doctor');
        request([['kc_doctor_save', $d, $req], ['kc_doctor_register', $d]], ['record' => $d['id']]);
        request([['kc_doctor_update', $d, $req]], ['record' => $d['id']]);
        request([['kc_doctor_delete', $ids['doctor']]], ['record' => $ids['doctor']]);
        $r = person_data('receptionist');
        request([['kc_receptionist_save', $r], ['kc_receptionist_created', $r]], ['record' => $r['id']]);
        request([['kc_receptionist_register', $r]], ['record' => $r['id']]);
        request([['kc_receptionist_update', $r, $req]], ['record' => $r['id']]);
        request([['kc_receptionist_delete', $ids['receptionist']]], ['record' => $ids['receptionist']]);
        // Clinics (Pro).
        request([['kcpro_clinic_save', $ids['clinic']]], ['record' => $ids['clinic']]);
        request([['kcpro_clinic_update', ['id' => $ids['clinic'], 'name' => 'Central Clinic']]], ['record' => $ids['clinic']]);
        request([['kcpro_clinic_delete', $ids['clinic']]], ['record' => $ids['clinic']]);
        // Bills: 3.x fires generate before the INSERT, with the fields and no id.
        $bill = ['encounter_id' => $e1, 'appointment_id' => $a1, 'title' => 'Consultation', 'total_amount' => '65.00',
            'discount' => '0.00', 'actual_amount' => '65.00', 'status' => 0, 'payment_status' => 'unpaid', 'clinic_id' => $ids['clinic']];
        request([['kc_encounter_bill_generate', $bill]], ['record' => 'encounter-' . $e1]);
        $wpdb->insert(t('kc_bills'), $bill + ['created_at' => current_time('mysql')]);
        $b1 = (int) $wpdb->insert_id;
        request([['kc_encounter_bill_update', $bill]], ['record' => $b1]);
        request([['kivicare_after_update_bill', $b1]], ['record' => $b1]);
        $wpdb->update(t('kc_bills'), ['payment_status' => 'paid'], ['id' => $b1]);
        request([['kc_encounter_bill_update', ['payment_status' => 'paid'] + $bill]], ['record' => $b1, 'paid' => true]);
        // Prescriptions.
        $wpdb->insert(t('kc_prescription'), ['encounter_id' => $e1, 'patient_id' => $ids['patient'], 'name' => 'Amoxicillin 500 mg',
            'frequency' => '3 times a day', 'duration' => '7 days', 'instruction' => 'After meals', 'added_by' => 1, 'created_at' => current_time('mysql')]);
        $rx = (int) $wpdb->insert_id;
        request([['kc_prescription_created', $rx]], ['record' => $rx]);
        request([['kc_prescription_updated', $rx]], ['record' => $rx]);
        // Services: 4.x passes the service as an array.
        $s = $ids['services'][0];
        request([['kc_service_add', ['id' => $s, 'name' => 'General consultation', 'price' => '45.00', 'clinic_id' => $ids['clinic']]]], ['record' => $s]);
        request([['kc_service_update', ['id' => $s, 'name' => 'General consultation']]], ['record' => $s]);
        request([['kc_service_delete', $s]], ['record' => $s]);

        $hooked = [];
        foreach (array_keys(KiviHook_Bridge_Events::ACTIONS) as $action) {
            $hooked[$action] = (bool) has_action($action);
        }
        out(['site_id' => KiviHook_Bridge_Sender::site_id(), 'ids' => $ids, 'hooked' => $hooked, 'requests' => $requests,
            'outbox' => KiviHook_Bridge_Outbox::counts()]);
        break;

    case 'book':
        $n = (int) ($argv[2] ?? 1);
        $ids = ids();
        $req = new WP_REST_Request('POST', '/kivicare/api/v1/appointments');
        for ($i = 0; $i < $n; $i++) {
            $a = appointment();
            request([['kc_after_create_appointment', $a, ['id' => $a, 'clinic_id' => $ids['clinic'], 'status' => 1], $req]], ['record' => $a]);
        }
        out(['requests' => $requests, 'outbox' => KiviHook_Bridge_Outbox::counts()]);
        break;

    case 'send':
        do_action('kivihook_bridge_send');
        $error = get_option('kivihook_bridge_last_error');
        out(['outbox' => KiviHook_Bridge_Outbox::counts(), 'last_error' => is_array($error) ? $error['message'] : null,
            'backoff_until' => (int) get_option('kivihook_bridge_backoff_until', 0), 'next_cron' => wp_next_scheduled('kivihook_bridge_send')]);
        break;

    case 'counts':
        global $wpdb;
        $error = get_option('kivihook_bridge_last_error');
        out(['outbox' => KiviHook_Bridge_Outbox::counts(), 'last_error' => is_array($error) ? $error['message'] : null,
            'parked' => KiviHook_Bridge_Outbox::parked(), 'max_attempts_parked' => (int) $wpdb->get_var(
                'SELECT MAX(attempts) FROM ' . KiviHook_Bridge_Outbox::table() . ' WHERE status = 2')]);
        break;

    case 'set-url':
        update_option('kivihook_bridge_url', $argv[2] ?? '');
        out(['url' => get_option('kivihook_bridge_url')]);
        break;

    case 'set-key':
        update_option('kivihook_bridge_key', $argv[2] ?? '');
        out(['ok' => true]);
        break;

    case 'key-stored':
        out(['stored' => get_option('kivihook_bridge_key')]);
        break;

    case 'test-connection':
        out(KiviHook_Bridge_Sender::test_connection());
        break;

    case 'enqueue-bad':
        // A site-defined event KiviHook refuses: `custom.` names are lower case.
        out(['written' => kivihook_bridge_enqueue('custom.Lab Result!', ids()['clinic'], ['note' => 'refused'], 'lab-1')]);
        break;

    case 'requeue-sent':
        global $wpdb;
        $n = (int) ($argv[2] ?? 1);
        $table = KiviHook_Bridge_Outbox::table();
        $done = $wpdb->query($wpdb->prepare("UPDATE {$table} SET status = 0 WHERE status = 1 ORDER BY id DESC LIMIT %d", $n));
        out(['requeued' => $done]);
        break;

    case 'render':
        $admin = get_user_by('login', 'admin');
        wp_set_current_user($admin->ID);
        ob_start();
        KiviHook_Bridge_Admin::render();
        echo ob_get_clean();
        break;

    case 'uninstall':
        global $wpdb;
        require_once ABSPATH . 'wp-admin/includes/plugin.php';
        deactivate_plugins('kivihook-bridge/kivihook-bridge.php');
        $cron_after_deactivate = (bool) wp_next_scheduled('kivihook_bridge_send');
        uninstall_plugin('kivihook-bridge/kivihook-bridge.php');
        $left = $wpdb->get_col("SELECT option_name FROM {$wpdb->options} WHERE option_name LIKE 'kivihook\\_bridge\\_%'");
        out(['cron_after_deactivate' => $cron_after_deactivate, 'options_left' => $left,
            'table_left' => (bool) $wpdb->get_var("SHOW TABLES LIKE '{$wpdb->prefix}kivihook_outbox'")]);
        break;

    default:
        fwrite(STDERR, "unknown command: {$kh_cmd}\n");
        exit(2);
}
